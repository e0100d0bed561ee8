// ARMT: forward, associative states and BPTT gradients against the independent autograd reference
// (tests/reference/rmt_grad_ref.py, fixtures rmt_grad/armt), finite differences, recomputation,
// forward == token-by-token decode, streaming in any chunks, checkpoints; and the continuation
// (score / generate) of both streaming wrappers, RMT and ARMT.
#include <filesystem>

#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/flops_report.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/save.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

const Checkpoint& golden() {
  static const Checkpoint g = Checkpoint::open(test::fixture("rmt_grad/armt/golden.safetensors"));
  return g;
}

template <class T>
double rel_to_f64(ConstView<T> got, const Checkpoint& g, const std::string& name) {
  const Tensor<double> ref = g.read<double>(name);
  REQUIRE(got.rows() * got.cols() == ref.numel());
  double err = 0, scale = 0;
  for (Index r = 0; r < got.rows(); ++r)
    for (Index c = 0; c < got.cols(); ++c) {
      const double want = ref.rank() == 1 ? ref.data()[r * got.cols() + c] : ref(r, c);
      err = std::max(err, std::abs(double(got(r, c)) - want));
      scale = std::max(scale, std::abs(want));
    }
  return err / std::max(scale, 1e-300);
}

std::vector<std::int32_t> tokens() { return test::read_tokens(golden()); }

rmt::TrainBatch lm_batch(const std::vector<std::int32_t>& tok, Index n_seqs = 1) {
  rmt::TrainBatch b;
  b.n_seqs = n_seqs, b.length = Index(tok.size()) / n_seqs, b.tokens = tok;
  for (Index i = 0; i < Index(tok.size()); ++i) b.labels.push_back(i % b.length + 1 < b.length ? tok[std::size_t(i + 1)] : train::kIgnore);
  return b;
}

// A random ARMT (every weight non-trivial, W_mv too) over a GPT-2 or Llama backbone.
template <class T>
rmt::ArmtWrapper<T> random_armt(const std::string& arch, Index m, Index s, Index d_mem, std::uint64_t seed) {
  const Index d = 12;
  ModelConfig mc = arch == "gpt2" ? ModelConfig::gpt2(29, d, 2, 3, s + m) : ModelConfig::llama(29, d, 2, 3, 1, 20);
  auto bb = Decoder<T>::create(mc);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 0.3);
  bb.visit_parameters([&](const std::string& name, Tensor<T>& t) {
    const bool norm = name.find("norm") != std::string::npos && name.ends_with(".weight");
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c) t.row(r)[c] = T((norm ? 1.0 : 0.0) + normal(rng));
  });
  auto shared = std::make_shared<const Decoder<T>>(std::move(bb));
  const auto config = rmt::ArmtConfig::make(m, s, d_mem);
  auto layers = rmt::init_associative<T>(*shared, config, seed + 1);
  for (auto& a : layers) a.wv.weight = test::random_tensor<T>({d, d}, seed + 2, 0.4);
  return rmt::ArmtWrapper<T>(shared, config, test::random_tensor<T>({m, d}, seed + 3, 0.5), std::move(layers));
}

template <class W>
double directional_fd_error(W& model, const rmt::TrainBatch& b, Index k2 = -1) {
  using T = typename W::Scalar;
  Gradients<T> g(model);
  typename W::TrainBuffers buf;
  const Index count = b.count(rmt::Layout::decoder);
  model.train_step(b, &g, buf, T(1.0 / double(count)), {.k2 = k2});
  std::mt19937_64 rng(9);
  std::normal_distribution<double> normal;
  std::vector<Tensor<T>> u;
  double predicted = 0;
  for (auto& e : g.entries()) {
    u.push_back(Tensor<T>(e.param->shape()));
    for (Index r = 0; r < e.grad.rows(); ++r)
      for (Index c = 0; c < e.grad.cols(); ++c) u.back()(r, c) = T(normal(rng)), predicted += double(u.back()(r, c) * e.grad(r, c));
  }
  auto shift = [&](double h) {
    for (std::size_t i = 0; i < g.size(); ++i)
      for (Index r = 0; r < u[i].rows(); ++r)
        for (Index c = 0; c < u[i].cols(); ++c) (*g.entries()[i].param)(r, c) += T(h) * u[i](r, c);
  };
  auto loss = [&] {
    typename W::TrainBuffers b2;
    return model.train_step(b, nullptr, b2, T(1), {.backward = false}).mean_loss();
  };
  const double h = 1e-5;
  shift(h);
  const double lp = loss();
  shift(-2 * h);
  const double lm = loss();
  shift(h);
  const double fd = (lp - lm) / (2 * h);
  INFO("directional derivative: finite differences " << fd << ", backward " << predicted);
  return std::abs(fd - predicted) / std::max(1.0, std::abs(fd));
}

double max_diff(const Gradients<double>& a, const Gradients<double>& b) {
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    for (Index r = 0; r < a.entries()[i].grad.rows(); ++r)
      for (Index c = 0; c < a.entries()[i].grad.cols(); ++c) e = std::max(e, std::abs(a.entries()[i].grad(r, c) - b.entries()[i].grad(r, c)));
  return e;
}

}  // namespace

TEST_CASE("ARMT forward and associative states match the reference per segment", "[armt][golden]") {
  const auto w = rmt::load_armt<double>(test::fixture("rmt_grad/armt"));
  CHECK(w.config().memory_tokens == 3);
  CHECK(w.config().d_key() == 24);
  CHECK(w.backbone().config.max_positions == 35);  // 32 backbone rows + 3 memory rows
  const auto tok = tokens();
  auto s = w.make_state({.content_logits = true});
  Index k = 0;  // the segment the callback sees
  const rmt::SegmentCallback<double> check_segment = [&](const rmt::SegmentOutput<double>& o) {
    const std::string p = "seg" + std::to_string(k++) + ".";
    INFO(p);
    CHECK(rel_to_f64<double>(o.hidden, golden(), p + "hidden") <= 1e-10);
    CHECK(rel_to_f64<double>(o.logits, golden(), p + "logits") <= 1e-10);
  };
  const auto check_state = [&](Index segment) {
    for (Index l = 0; l < 2; ++l) {
      const std::string p = "seg" + std::to_string(segment) + ".";
      INFO(p << " layer " << l);
      CHECK(rel_to_f64<double>(s.A(l), golden(), p + "A" + std::to_string(l)) <= 1e-10);
      CHECK(rel_to_f64<double>(s.z(l), golden(), p + "z" + std::to_string(l)) <= 1e-10);
    }
  };
  for (Index j = 0; j < 3; ++j) {
    const Index begin = 6 * j, n = std::min<Index>(6, Index(tok.size()) - begin);
    w.push(std::span<const std::int32_t>(tok).subspan(std::size_t(begin), std::size_t(n)), s, check_segment);
    // Segment j is held until a token follows it: this push ran segment j - 1.
    CHECK(k == j);
    if (j > 0) check_state(j - 1);
  }
  w.finish(s, check_segment);
  CHECK(k == 3);
  check_state(2);
  const auto r = w.run(tok, {.all_logits = true});
  CHECK(r.n_segments == 3);
  CHECK(rel_to_f64<double>(r.logits.view(), golden(), "logits") <= 1e-10);
  const auto wf = rmt::load_armt<float>(test::fixture("rmt_grad/armt"));
  CHECK(rel_to_f64<float>(wf.run(tok, {.all_logits = true}).logits.view(), golden(), "logits") <= 1e-5);
}

TEST_CASE("ARMT with W_mv = 0 reads nothing: the plain backbone on [x | M] per segment", "[armt][golden]") {
  auto w = rmt::load_armt<double>(test::fixture("rmt_grad/armt"));
  std::vector<rmt::AssociativeMemory<double>> layers;
  for (const auto& a : w.layers()) {
    rmt::AssociativeMemory<double> z(16, 4, 3);
    z.wq.weight = a.wq.weight.copy(), z.wk.weight = a.wk.weight.copy(), z.wb.weight = a.wb.weight.copy(), z.wb.bias = a.wb.bias.copy();
    layers.push_back(std::move(z));
  }
  const rmt::ArmtWrapper<double> w0(w.shared_backbone(), w.config(), w.memory().copy(), std::move(layers));
  CHECK(rel_to_f64<double>(w0.run(tokens(), {.all_logits = true}).logits.view(), golden(), "armt_m0.logits") <= 1e-10);
}

TEST_CASE("ARMT BPTT gradients match the autograd reference", "[armt][train][golden]") {
  for (bool recompute : {true, false}) {
    auto w = rmt::load_armt<double>(test::fixture("rmt_grad/armt"));
    Gradients<double> g(w);
    rmt::ArmtBuffers<double> buf;
    const rmt::TrainBatch b = lm_batch(tokens());
    const auto st = w.train_step(b, &g, buf, 1.0 / double(b.count(rmt::Layout::decoder)), {.recompute = recompute});
    CHECK(st.segments == 3);
    CHECK(std::abs(st.mean_loss() - golden().read<double>("loss").data()[0]) <= 1e-12);
    // The golden gradients as a model (same names), compared parameter by parameter.
    const auto file = safetensors::File::open(test::fixture("rmt_grad/armt/golden.safetensors").string());
    safetensors::Writer wr;
    for (const auto& t : file.tensors())
      if (t.name.rfind("grad.", 0) == 0) wr.add(t.name.substr(5), file.read<double>(t.name), safetensors::DType::F64);
    test::TempDir tmp;
    std::filesystem::copy_file(test::fixture("rmt_grad/armt/config.json"), tmp.path() / "config.json");
    wr.write((tmp.path() / "model.safetensors").string());
    auto ref = rmt::load_armt<double>(tmp.path());
    std::vector<Tensor<double>*> want;
    ref.visit_parameters([&](const std::string&, Tensor<double>& t) { want.push_back(&t); });
    std::size_t i = 0;
    double worst = 0;
    std::string worst_name;
    w.visit_parameters([&](const std::string& name, Tensor<double>& p) {
      const Tensor<double>& got = *g.find(p);
      const Tensor<double>& ref_g = *want[i++];
      double diff = 0, scale = 0;
      for (Index r = 0; r < got.rows(); ++r)
        for (Index c = 0; c < got.cols(); ++c)
          diff = std::max(diff, std::abs(got(r, c) - ref_g(r, c))), scale = std::max(scale, std::abs(ref_g(r, c)));
      const double e = scale > 0 ? diff / scale : diff;
      if (e > worst) worst = e, worst_name = name;
    });
    INFO("recompute " << recompute << ": worst gradient " << worst_name << " relative error " << worst);
    CHECK(worst <= 1e-8);
  }
}

TEST_CASE("ARMT gradients agree with finite differences; k2 and recomputation", "[armt][train][fd]") {
  for (const char* arch : {"gpt2", "llama"}) {
    INFO(arch);
    auto w = random_armt<double>(arch, 2, 5, 3, 21);
    std::vector<std::int32_t> tok;
    for (int i = 0; i < 34; ++i) tok.push_back(std::int32_t((i * 7 + 2) % 29));
    rmt::TrainBatch b = lm_batch(tok, 2);  // 2 sequences of 17: segments 5, 5, 5, 2
    for (std::size_t i = 0; i < b.labels.size(); i += 3) b.labels[i] = train::kIgnore;
    {
      // Two segments: the only gamma that reaches the loss is segment 0's (1, a constant), so the
      // gamma-detached gradient is the true one (three segments: the golden test, whose reference
      // holds gamma at its base value for its differences).
      std::vector<std::int32_t> t2(tok.begin(), tok.begin() + 18);
      rmt::TrainBatch b2 = lm_batch(t2, 2);  // 2 sequences of 9: segments 5, 4
      for (std::size_t i = 0; i < b2.labels.size(); i += 4) b2.labels[i] = train::kIgnore;
      CHECK(directional_fd_error(w, b2) <= 1e-6);
    }
    auto grads = [&](Index k2, bool recompute) {
      Gradients<double> g(w);
      rmt::ArmtBuffers<double> buf;
      w.train_step(b, &g, buf, 0.1, {.k2 = k2, .recompute = recompute});
      return g;
    };
    const auto full = grads(-1, true);
    CHECK(max_diff(full, grads(-1, false)) == 0.0);
    CHECK(max_diff(full, grads(4, true)) == 0.0);
    CHECK(max_diff(full, grads(2, true)) > 1e-8);
    CHECK(max_diff(grads(2, true), grads(2, false)) == 0.0);
  }
}

TEST_CASE("ARMT forward equals its token-by-token decode; streaming in any chunks equals one call", "[armt][stream]") {
  const auto w = random_armt<float>("gpt2", 3, 7, 4, 5);
  std::vector<std::int32_t> tok;
  for (int i = 0; i < 40; ++i) tok.push_back(std::int32_t((i * 13 + 1) % 29));
  const auto whole = w.run(tok, {.all_logits = true});
  CHECK(whole.n_segments == 6);
  for (std::size_t chunk : {std::size_t(1), std::size_t(3), std::size_t(7), tok.size()}) {
    INFO("chunk " << chunk);
    auto s = w.make_state({.content_logits = true});
    Tensor<float> logits({Index(tok.size()), 29});
    const rmt::SegmentCallback<float> keep = [&](const rmt::SegmentOutput<float>& o) {
      copy(o.logits, logits.view().middle_rows(o.tokens.begin, o.tokens.size));
    };
    for (std::size_t i = 0; i < tok.size(); i += chunk) w.push(std::span<const std::int32_t>(tok).subspan(i, std::min(chunk, tok.size() - i)), s, keep);
    w.finish(s, keep);
    CHECK(test::relative_error<float>(logits.view(), whole.logits.view()) == 0.0);
  }
  // Decode: the first token read, then every next token scored one at a time on the KV cache (the
  // segments' writes appended as they complete) gives the whole run's log-probabilities.
  for (const auto& pair : {std::pair<Index, Index>{1, 39}, {9, 31}, {14, 26}}) {
    auto s = w.make_state();
    w.push(std::span<const std::int32_t>(tok).first(std::size_t(pair.first)), s);
    std::vector<double> lp(std::size_t(pair.second));
    w.score(std::span<const std::int32_t>(tok).subspan(std::size_t(pair.first)), s, lp);
    for (Index i = 0; i < pair.second; ++i) {
      const Index t = pair.first + i - 1;  // the row predicting token pair.first + i
      double mx = -INFINITY, sum = 0;
      for (Index c = 0; c < 29; ++c) mx = std::max(mx, double(whole.logits(t, c)));
      for (Index c = 0; c < 29; ++c) sum += std::exp(double(whole.logits(t, c)) - mx);
      const double want = double(whole.logits(t, tok[std::size_t(t + 1)])) - mx - std::log(sum);
      CHECK(std::abs(lp[std::size_t(i)] - want) <= 1e-4);
    }
    CHECK(s.tokens_pushed() == 40);
    CHECK(s.segments() == 5);  // 35 tokens in 5 full segments, 5 buffered
  }
}

TEST_CASE("RMT continuation: score equals the whole run, generate is its greedy argmax", "[rmt][stream]") {
  const auto rmt_model = rmt::load<float>(test::fixture("rmt/decoder"));
  auto llama = std::make_shared<const Decoder<float>>(hf::load_decoder<float>(test::fixture("llama_tiny")));
  const rmt::RecurrentWrapper<float> bidir(
      rmt::MemoryCell<float>(llama, rmt::Config::decoder(4, 5, rmt::MemoryMask::bidirectional), rmt::hf_initial_memory(*llama, 4, 7)));
  for (const auto* w : {&rmt_model, &bidir}) {
    std::vector<std::int32_t> tok;
    for (int i = 0; i < 23; ++i) tok.push_back(std::int32_t((i * 7 + 3) % 30));
    const auto whole = w->run(tok, {.all_logits = true});
    const Index V = whole.logits.cols();
    for (Index first : {1, 6, 10, 12}) {
      INFO("first " << first);
      auto s = w->make_state();
      w->push(std::span<const std::int32_t>(tok).first(std::size_t(first)), s);
      std::vector<double> lp(tok.size() - std::size_t(first));
      w->score(std::span<const std::int32_t>(tok).subspan(std::size_t(first)), s, lp);
      for (std::size_t i = 0; i < lp.size(); ++i) {
        const Index t = first + Index(i) - 1;
        double mx = -INFINITY, sum = 0;
        for (Index c = 0; c < V; ++c) mx = std::max(mx, double(whole.logits(t, c)));
        for (Index c = 0; c < V; ++c) sum += std::exp(double(whole.logits(t, c)) - mx);
        CHECK(std::abs(lp[i] - (double(whole.logits(t, tok[std::size_t(t + 1)])) - mx - std::log(sum))) <= 1e-4);
      }
      // The scored tokens were pushed: the state equals one that pushed everything (memory to rounding).
      auto ref = w->make_state();
      w->push(tok, ref);
      CHECK(s.segments() == ref.segments());
      CHECK(test::relative_error<float>(s.memory(), Tensor<float>::from_view(ref.memory()).view()) <= 1e-4);
    }
    // Greedy generation: each token is the argmax of the logits after the previous ones.
    auto g = w->make_state();
    w->push(std::span<const std::int32_t>(tok).first(8), g);
    const auto gen = w->generate(g, 9);
    REQUIRE(gen.size() == 9);
    std::vector<std::int32_t> seq(tok.begin(), tok.begin() + 8);
    seq.insert(seq.end(), gen.begin(), gen.end());
    const auto again = w->run(seq, {.all_logits = true});
    for (std::size_t i = 0; i < gen.size(); ++i) {
      const float* row = again.logits.row(Index(7 + i));
      CHECK(std::int32_t(std::max_element(row, row + V) - row) == gen[i]);
    }
    CHECK(g.tokens_pushed() == 17);
  }
  // Errors: nothing read; the encoder layout; a finished sequence.
  auto empty = rmt_model.make_state();
  std::vector<double> out(1);
  CHECK_THROWS_AS(rmt_model.score(std::vector<std::int32_t>{1}, empty, out), Error);
  CHECK_THROWS_AS(rmt_model.generate(empty, 3), Error);
  const auto enc = rmt::load<float>(test::fixture("rmt/encoder"));
  auto es = enc.make_state({.total_tokens = 3});
  enc.push(std::vector<std::int32_t>{3, 4, 5}, es);
  CHECK_THROWS_AS(enc.generate(es, 1), Error);
}

// log p(tok[t + 1] | ...) from the content logits [N, V] of a whole run, row t.
double row_log_prob(const Tensor<float>& logits, Index t, std::int32_t token) {
  double mx = -INFINITY, sum = 0;
  for (Index c = 0; c < logits.cols(); ++c) mx = std::max(mx, double(logits(t, c)));
  for (Index c = 0; c < logits.cols(); ++c) sum += std::exp(double(logits(t, c)) - mx);
  return double(logits(t, token)) - mx - std::log(sum);
}

TEST_CASE("A completed segment is held until a token follows it; finish runs it", "[rmt][armt][stream]") {
  const auto r = rmt::load<float>(test::fixture("rmt/decoder"));  // segments of 6
  const auto a = random_armt<float>("gpt2", 3, 7, 4, 5);           // segments of 7
  std::vector<std::int32_t> tok;
  for (int i = 0; i < 21; ++i) tok.push_back(std::int32_t((i * 5 + 2) % 29));
  const std::span<const std::int32_t> all(tok);
  auto rs = r.make_state();
  r.push(all.first(12), rs);  // two segments complete; the second waits for a token after it
  CHECK(rs.segments() == 1);
  CHECK(rs.tokens_processed() == 6);
  r.push(all.subspan(12, 1), rs);
  CHECK(rs.segments() == 2);
  r.push(all.subspan(13, 5), rs);  // 18 tokens: the third segment is held
  CHECK(rs.segments() == 2);
  r.finish(rs);
  CHECK(rs.segments() == 3);
  CHECK(test::relative_error<float>(rs.memory(), r.run(all.first(18)).final_memory.view()) == 0.0);
  auto as = a.make_state();
  a.push(all.first(14), as);
  CHECK(as.segments() == 1);
  a.push(all.subspan(14, 1), as);
  CHECK(as.segments() == 2);
  a.finish(as);
  CHECK(as.segments() == 3);
  CHECK(as.tokens_processed() == 15);
}

TEST_CASE("Answer continuations extend the last segment, as the official generate", "[rmt][armt][stream]") {
  auto llama = std::make_shared<const Decoder<float>>(hf::load_decoder<float>(test::fixture("llama_tiny")));
  std::vector<std::int32_t> tok;
  for (int i = 0; i < 13; ++i) tok.push_back(std::int32_t((i * 7 + 3) % 29));
  const std::span<const std::int32_t> prompt = std::span<const std::int32_t>(tok).first(10), answer = std::span<const std::int32_t>(tok).subspan(10);
  for (auto mask : {rmt::MemoryMask::causal, rmt::MemoryMask::bidirectional}) {
    INFO("memory mask " << int(mask));
    const rmt::RecurrentWrapper<float> w(rmt::MemoryCell<float>(llama, rmt::Config::decoder(4, 5, mask), rmt::hf_initial_memory(*llama, 4, 7)));
    // The prompt fills two segments exactly: the answer continues the second, reading the memory
    // the first wrote. Reference: one segment of 8 over that memory, [M1 | tokens 5..9 | answer].
    const auto whole = w.run(prompt, {.keep_segments = true});
    REQUIRE(whole.segments.size() == 2);
    const rmt::RecurrentWrapper<float> wide(rmt::MemoryCell<float>(llama, rmt::Config::decoder(4, 8, mask), whole.segments[1].memory_in.copy()));
    const auto ref = wide.run(std::span<const std::int32_t>(tok).subspan(5), {.all_logits = true});
    auto s = w.make_state();
    w.push(prompt, s);
    auto streamed = s.copy();
    std::vector<double> lp(answer.size()), lp_stream(answer.size());
    w.score(answer, s, lp, rmt::Continuation::answer);
    for (std::size_t i = 0; i < lp.size(); ++i) CHECK(std::abs(lp[i] - row_log_prob(ref.logits, Index(4 + i), answer[i])) <= 1e-4);
    CHECK(s.finished());
    CHECK(s.segments() == 1);  // the last segment never ran: nothing was written
    CHECK_THROWS_AS(w.push(answer, s), Error);
    // Streamed, the answer after a full segment starts a new one: the first token is the same
    // prediction, the rest differ.
    w.score(answer, streamed, lp_stream);
    CHECK(std::abs(lp_stream[0] - lp[0]) <= 1e-5);
    CHECK(std::abs(lp_stream[1] - lp[1]) > 1e-4);
    // Inside a segment both modes are the same rows.
    auto p1 = w.make_state(), p2 = w.make_state();
    w.push(std::span<const std::int32_t>(tok).first(6), p1);
    w.push(std::span<const std::int32_t>(tok).first(6), p2);
    std::vector<double> x1(3), x2(3);
    w.score(std::span<const std::int32_t>(tok).subspan(6, 3), p1, x1, rmt::Continuation::answer);
    w.score(std::span<const std::int32_t>(tok).subspan(6, 3), p2, x2);
    for (std::size_t i = 0; i < 3; ++i) CHECK(std::abs(x1[i] - x2[i]) <= 1e-6);
    // Greedy answers are the argmax of the same rows.
    auto g = w.make_state();
    w.push(prompt, g);
    const auto gen = w.generate(g, 3, -1, rmt::Continuation::answer);
    REQUIRE(gen.size() == 3);
    CHECK(g.finished());
    std::vector<std::int32_t> seq(tok.begin() + 5, tok.begin() + 10);
    seq.insert(seq.end(), gen.begin(), gen.end());
    const auto again = wide.run(seq, {.all_logits = true});
    for (std::size_t i = 0; i < gen.size(); ++i) {
      const float* row = again.logits.row(Index(4 + i));
      CHECK(std::int32_t(std::max_element(row, row + again.logits.cols()) - row) == gen[i]);
    }
  }
  // ARMT: a prompt of one full segment answered in it equals a wider segment over the same weights.
  const auto a5 = random_armt<float>("llama", 3, 5, 4, 11), a8 = random_armt<float>("llama", 3, 8, 4, 11);
  const auto ref = a8.run(std::span<const std::int32_t>(tok).first(8), {.all_logits = true});
  auto s = a5.make_state();
  a5.push(std::span<const std::int32_t>(tok).first(5), s);
  std::vector<double> lp(3);
  a5.score(std::span<const std::int32_t>(tok).subspan(5, 3), s, lp, rmt::Continuation::answer);
  for (std::size_t i = 0; i < lp.size(); ++i) CHECK(std::abs(lp[i] - row_log_prob(ref.logits, Index(4 + i), tok[5 + i])) <= 1e-4);
  CHECK(s.finished());
  // Two segments: the answer reads the associative memory the first wrote, so it differs from the
  // same tokens answered after the second segment alone; streamed it differs again.
  auto two = a5.make_state(), alone = a5.make_state(), streamed = a5.make_state();
  a5.push(prompt, two);
  a5.push(prompt, streamed);
  a5.push(prompt.subspan(5), alone);
  std::vector<double> l2(3), la(3), ls(3);
  a5.score(answer, two, l2, rmt::Continuation::answer);
  a5.score(answer, alone, la, rmt::Continuation::answer);
  a5.score(answer, streamed, ls);
  CHECK(std::abs(l2[0] - ls[0]) <= 1e-5);
  CHECK(std::abs(l2[1] - ls[1]) > 1e-4);
  CHECK(std::abs(l2[0] - la[0]) > 1e-4);
  // Learned position tables bound an answer: GPT-2 fixture, 3 memory + 6 tokens of 32 positions.
  const auto g2 = rmt::load<float>(test::fixture("rmt/decoder"));
  const auto ga = random_armt<float>("gpt2", 3, 7, 4, 5);  // 10 positions, segments of 7
  for (Index n : {23, 24}) {
    auto st = g2.make_state();
    g2.push(std::span<const std::int32_t>(tok).first(6), st);
    std::vector<std::int32_t> cont(std::size_t(n), 1);
    std::vector<double> out(cont.size());
    if (n == 23) CHECK_NOTHROW(g2.score(cont, st, out, rmt::Continuation::answer));
    else CHECK_THROWS_WITH(g2.score(cont, st, out, rmt::Continuation::answer), Catch::Contains("max_position_embeddings = 32"));
    auto at = ga.make_state();
    ga.push(std::span<const std::int32_t>(tok).first(7), at);
    if (n == 23) CHECK_NOTHROW(ga.generate(at, 3, -1, rmt::Continuation::answer));
    else CHECK_THROWS_WITH(ga.generate(at, 4, -1, rmt::Continuation::answer), Catch::Contains("max_position_embeddings = 10"));
  }
}

TEST_CASE("RMT and ARMT checkpoints round-trip; a checkpoint of the other layout is refused", "[armt][rmt][loader][errors]") {
  const auto w = random_armt<float>("gpt2", 3, 7, 4, 5);
  test::TempDir dir;
  rmt::save(w, dir.path() / "armt");
  const auto back = rmt::load_armt<float>(dir.path() / "armt");
  std::vector<std::int32_t> tok;
  for (int i = 0; i < 20; ++i) tok.push_back(std::int32_t(i % 29));
  CHECK(test::relative_error<float>(back.run(tok, {.all_logits = true}).logits.view(), w.run(tok, {.all_logits = true}).logits.view()) == 0.0);
  const auto r = rmt::load<float>(test::fixture("rmt/decoder"));
  rmt::save(r, dir.path() / "rmt");
  const auto rb = rmt::load<float>(dir.path() / "rmt");
  CHECK(test::relative_error<float>(rb.run(tok, {.all_logits = true}).logits.view(), r.run(tok, {.all_logits = true}).logits.view()) == 0.0);
  const auto e = rmt::load<float>(test::fixture("rmt/encoder"));
  rmt::save(e, dir.path() / "enc");
  const auto eb = rmt::load<float>(dir.path() / "enc");
  const std::vector<std::int32_t> et = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
  CHECK(test::relative_error<float>(eb.run(et).readout.view(), e.run(et).readout.view()) == 0.0);
  // The wrong layout, by name.
  try {
    (void)rmt::load<float>(dir.path() / "armt");
    FAIL("an ARMT checkpoint loaded as RMT");
  } catch (const Error& err) {
    CHECK(std::string(err.what()).find("not an RMT checkpoint") != std::string::npos);
  }
  try {
    (void)rmt::load_armt<float>(dir.path() / "rmt");
    FAIL("an RMT checkpoint loaded as ARMT");
  } catch (const Error& err) {
    CHECK(std::string(err.what()).find("RMT checkpoint") != std::string::npos);
  }
  CHECK_THROWS_AS(rmt::load_parameters(const_cast<rmt::RecurrentWrapper<float>&>(r), dir.path() / "enc"), Error);
}

TEST_CASE("ARMT input errors", "[armt][errors]") {
  const auto w = random_armt<float>("gpt2", 3, 7, 4, 5);
  auto bb = w.shared_backbone();
  auto layers = [&] { return rmt::init_associative<float>(*bb, w.config(), 1); };
  CHECK_THROWS_AS(rmt::ArmtWrapper<float>(bb, rmt::ArmtConfig::make(0, 7, 4), Tensor<float>({0, 12}), layers()), Error);  // memory size 0
  CHECK_THROWS_AS(rmt::ArmtWrapper<float>(bb, rmt::ArmtConfig::make(3, 2, 4), w.memory().copy(), layers()), Error);     // segment < memory
  CHECK_THROWS_AS(rmt::ArmtWrapper<float>(bb, rmt::ArmtConfig::make(3, 8, 4), w.memory().copy(), layers()), Error);     // 8 + 3 > 10 positions
  CHECK_THROWS_AS(rmt::ArmtWrapper<float>(bb, rmt::ArmtConfig::make(3, 7, 5), w.memory().copy(), layers()), Error);     // d_mem of the layers
  CHECK_THROWS_AS(rmt::ArmtWrapper<float>(bb, w.config(), Tensor<float>({2, 12}), layers()), Error);                   // memory shape
  auto one = layers();
  one.pop_back();
  CHECK_THROWS_AS(rmt::ArmtWrapper<float>(bb, w.config(), w.memory().copy(), std::move(one)), Error);  // one per block
  auto s = w.make_state();
  CHECK_THROWS_AS(w.push(std::vector<std::int32_t>{29}, s), Error);
  CHECK_THROWS_AS(w.finish(s), Error);
  std::vector<double> out(2);
  CHECK_THROWS_AS(w.score(std::vector<std::int32_t>{1, 2}, s, out), Error);  // nothing read yet
  rmt::ArmtBuffers<float> buf;
  rmt::TrainBatch b = lm_batch(std::vector<std::int32_t>{1, 2, 3, 4});
  b.labels[0] = 29;
  CHECK_THROWS_AS(w.train_step(b, nullptr, buf, 1.f), Error);
  CHECK_THROWS_AS(rmt::armt_config_from_json(json::parse(R"({"num_mem_tokens":2,"segment_size":4,"d_mem":2,"n_heads":2})")), Error);
  CHECK_THROWS_AS(rmt::armt_config_from_json(json::parse(R"({"num_mem_tokens":2,"segment_size":4,"d_mem":2,"d_key":5})")), Error);
  CHECK_THROWS_AS(rmt::armt_config_from_json(json::parse(R"({"num_mem_tokens":0,"segment_size":4,"d_mem":2})")), Error);
}

TEST_CASE("ARMT's FLOP counter agrees with the report's associative-memory formula", "[armt][flops]") {
  namespace fr = rmt::flops_report;
  const auto w = random_armt<float>("gpt2", 3, 7, 4, 5);
  std::vector<std::int32_t> tok(20, 4);  // segments of 7, 7, 6
  const auto r = w.run(tok);
  const fr::ModelShape shape{"armt", 29, 2, 12, 3, 48};
  const fr::ArmtShape a{7, 3, 4, 3};
  // The first segment's state is zero: it reads nothing and its write has no prev = k A term.
  double expected = 0;
  for (double s_k : {7.0, 7.0, 6.0}) expected += 2 * fr::armt_associative_flops(shape, s_k, a);
  const double n0 = 7 + 3, d = 12, k = a.d_key();
  expected -= 2 * (2 * n0 * d * 4 + 2 * n0 * k * d + 2 * n0 * k) + 2 * (2 * 3 * k * d);
  CHECK(r.flops[FlopCategory::other] == Approx(expected).epsilon(1e-12));
  // The official configuration (GPT-2 small, m = 10, d_mem = 64, s = 512): the associative memory
  // adds a few percent to a segment.
  const fr::ModelShape gpt2{"GPT-2", 50257, 12, 768, 12, 3072};
  const double extra = 12 * fr::armt_associative_flops(gpt2, 512, {512, 10, 64, 3});
  const double seg = fr::armt_segment_flops(gpt2, 512, {512, 10, 64, 3}, fr::kOneVocabMatmul);
  CHECK(extra / seg > 0.01);
  CHECK(extra / seg < 0.1);
  CHECK(fr::armt_flops(gpt2, 1000, {512, 10, 64, 3}, fr::kBodies) ==
        Approx(fr::armt_segment_flops(gpt2, 512, {512, 10, 64, 3}, fr::kBodies) + fr::armt_segment_flops(gpt2, 488, {512, 10, 64, 3}, fr::kBodies)));
}
