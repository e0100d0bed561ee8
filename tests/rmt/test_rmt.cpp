// RMT: the decoder and encoder memory cells against the PyTorch reference (tests/reference/rmt_ref.py),
// the bidirectional memory mask, the invariants (m = 0 equals the plain model; streaming in any
// chunks equals one call), state copy/reset/bytes, loading, input errors, and the FLOPs report.
#include <fstream>

#include "engram/nn/init.hpp"
#include "engram/rmt/flops_report.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/loader.hpp"
#include "engram/ttt/loader.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

const Checkpoint& golden(const std::string& layout) {
  static const Checkpoint dec = Checkpoint::open(test::fixture("rmt/decoder/golden.safetensors"));
  static const Checkpoint enc = Checkpoint::open(test::fixture("rmt/encoder/golden.safetensors"));
  return layout == "decoder" ? dec : enc;
}

template <class T>
double rel(ConstView<T> got, const Checkpoint& g, const std::string& name) {
  const auto ref = g.read<float>(name);
  return test::relative_error<T>(got, ref.view());
}

// Checks the relative error against golden tensor `name` (printed with -s).
template <class T>
void expect_close(ConstView<T> got, const Checkpoint& g, const std::string& name, double tolerance) {
  const double e = rel<T>(got, g, name);
  INFO(name << ": relative error " << e);
  CHECK(e <= tolerance);
}

// The same backbone and memory with another configuration.
template <class T>
rmt::RecurrentWrapper<T> rewrap(const rmt::RecurrentWrapper<T>& w, rmt::Config c, Tensor<T> memory) {
  return rmt::RecurrentWrapper<T>(rmt::MemoryCell<T>(w.cell().shared_backbone(), c, std::move(memory)));
}

// Content logits [N, V] and final memory of a streaming run fed in chunks of `chunk` tokens.
template <class T>
std::pair<Tensor<T>, Tensor<T>> stream(const rmt::RecurrentWrapper<T>& w, const std::vector<std::int32_t>& tokens, std::size_t chunk) {
  auto s = w.make_state({.content_logits = true});
  Tensor<T> logits({Index(tokens.size()), w.backbone().config.vocab_size});
  const rmt::SegmentCallback<T> keep = [&](const rmt::SegmentOutput<T>& o) {
    copy(o.logits, logits.view().middle_rows(o.tokens.begin, o.tokens.size));
  };
  for (std::size_t i = 0; i < tokens.size(); i += chunk)
    w.push(std::span<const std::int32_t>(tokens).subspan(i, std::min(chunk, tokens.size() - i)), s, keep);
  w.finish(s, keep);
  return {std::move(logits), Tensor<T>::from_view(s.memory())};
}

template <class T>
void check_decoder_golden(double tolerance) {
  const auto w = rmt::load<T>(test::fixture("rmt/decoder"));
  const Checkpoint& g = golden("decoder");
  const auto tokens = test::read_tokens(g);
  CHECK(w.config().memory_tokens == 3);
  CHECK(w.config().segment_size == 6);
  const auto r = w.run(tokens, {.all_logits = true, .keep_segments = true});
  REQUIRE(r.n_segments == 3);
  REQUIRE(r.segments.size() == 3);
  double worst = 0;
  for (int k = 0; k < 3; ++k) {
    const auto& seg = r.segments[std::size_t(k)];
    CHECK(seg.tokens == rmt::Segment{6 * k, k < 2 ? 6 : 3});
    const std::string p = "seg" + std::to_string(k) + ".";
    for (const auto& [name, t] : {std::pair<std::string, const Tensor<T>*>{"mem_in", &seg.memory_in},
                                  {"hidden", &seg.hidden}, {"logits", &seg.logits}, {"mem_out", &seg.memory_out}}) {
      const double e = rel<T>(t->view(), g, p + name);
      INFO(p + name << ": relative error " << e);
      CHECK(e <= tolerance);
      worst = std::max(worst, e);
    }
  }
  const double el = rel<T>(r.logits.view(), g, "logits"), em = rel<T>(r.final_memory.view(), g, "final_memory");
  INFO("logits " << el << ", final memory " << em << ", worst per-segment " << worst);
  CHECK(el <= tolerance);
  CHECK(em <= tolerance);
  // The readout is the last content token's logits.
  CHECK(test::relative_error<T>(r.readout.view(), g.read<float>("logits").view().middle_rows(14, 1)) <= tolerance);
}

}  // namespace

TEST_CASE("RMT decoder cell matches the PyTorch reference per segment", "[rmt][golden]") {
  check_decoder_golden<float>(1e-5);
  check_decoder_golden<double>(1e-6);  // goldens are float-rounded (1e-7 relative)
}

TEST_CASE("RMT decoder with the NeurIPS bidirectional memory mask matches the reference", "[rmt][golden]") {
  const auto base = rmt::load<float>(test::fixture("rmt/decoder"));
  auto c = base.config();
  c.memory_mask = rmt::MemoryMask::bidirectional;
  const auto w = rewrap(base, c, base.cell().initial_memory().copy());
  const Checkpoint& g = golden("decoder");
  const auto r = w.run(test::read_tokens(g), {.all_logits = true, .keep_segments = true});
  expect_close<float>(r.logits.view(), g, "bidir.logits", 1e-5);
  expect_close<float>(r.final_memory.view(), g, "bidir.final_memory", 1e-5);
  for (int k = 0; k < 3; ++k)
    expect_close<float>(r.segments[std::size_t(k)].memory_out.view(), g, "bidir.seg" + std::to_string(k) + ".mem_out", 1e-5);
  // The mask is visible: the causal run's memory differs.
  CHECK(rel<float>(r.final_memory.view(), g, "final_memory") > 1e-3);
}

TEST_CASE("one segment with zero memory tokens equals the plain model", "[rmt][invariant]") {
  const auto base = rmt::load<float>(test::fixture("rmt/decoder"));
  const Checkpoint& g = golden("decoder");
  const auto tokens = test::read_tokens(g);
  for (auto mask : {rmt::MemoryMask::causal, rmt::MemoryMask::bidirectional}) {
    const auto w = rewrap(base, rmt::Config::decoder(0, 15, mask), Tensor<float>());
    const auto r = w.run(tokens, {.all_logits = true});
    CHECK(r.n_segments == 1);
    CHECK(r.final_memory.rows() == 0);
    expect_close<float>(r.logits.view(), g, "full_lm.logits", 1e-5);
    auto plain = base.backbone().make_state();
    const auto ref = base.backbone().prefill(tokens, plain, {.all_logits = true});
    CHECK(test::relative_error<float>(r.logits.view(), ref.view()) <= 1e-6);
  }
  // Any block stack: a Llama (RoPE, RMSNorm, SwiGLU) backbone; positions restart with the state.
  auto llama = std::make_shared<const Decoder<float>>(hf::load_decoder<float>(test::fixture("llama_tiny")));
  const std::vector<std::int32_t> ids = {1, 5, 9, 2, 7, 3, 11, 4, 8};
  const rmt::RecurrentWrapper<float> w0(rmt::MemoryCell<float>(llama, rmt::Config::decoder(0, 9), Tensor<float>()));
  auto plain = llama->make_state();
  const auto ref = llama->prefill(ids, plain, {.all_logits = true});
  CHECK(test::relative_error<float>(w0.run(ids, {.all_logits = true}).logits.view(), ref.view()) <= 1e-6);
}

TEST_CASE("feeding segments one call at a time or token by token equals one call", "[rmt][invariant]") {
  const auto dec = rmt::load<float>(test::fixture("rmt/decoder"));
  auto llama = std::make_shared<const Decoder<float>>(hf::load_decoder<float>(test::fixture("llama_tiny")));
  const rmt::RecurrentWrapper<float> rope(
      rmt::MemoryCell<float>(llama, rmt::Config::decoder(4, 5, rmt::MemoryMask::bidirectional), rmt::hf_initial_memory(*llama, 4, 7)));
  std::vector<std::int32_t> long_tokens;
  for (int i = 0; i < 23; ++i) long_tokens.push_back(std::int32_t((i * 7 + 3) % 30));
  const std::vector<std::pair<const rmt::RecurrentWrapper<float>*, std::vector<std::int32_t>>> cases = {
      {&dec, test::read_tokens(golden("decoder"))}, {&rope, long_tokens}};
  for (const auto& [w, tokens] : cases) {
    const auto whole = w->run(tokens, {.all_logits = true});
    for (std::size_t chunk : {std::size_t(1), std::size_t(4), std::size_t(w->config().segment_size), tokens.size()}) {
      INFO("chunk " << chunk);
      const auto [logits, memory] = stream(*w, tokens, chunk);
      // Identical segments run identical arithmetic: the results are bitwise equal.
      CHECK(test::relative_error<float>(logits.view(), whole.logits.view()) == 0.0);
      CHECK(test::relative_error<float>(memory.view(), whole.final_memory.view()) == 0.0);
    }
  }
}

TEST_CASE("RMT wraps a block stack with TTT mixers unchanged", "[rmt][invariant]") {
  auto ttt_lm = std::make_shared<const Decoder<float>>(ttt::load_decoder<float>(test::fixture("ttt/model_linear_T")));
  std::vector<std::int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(std::int32_t((i * 13 + 1) % 53));
  // m = 0, one segment: the plain TTT model.
  const rmt::RecurrentWrapper<float> w0(rmt::MemoryCell<float>(ttt_lm, rmt::Config::decoder(0, 40), Tensor<float>()));
  auto plain = ttt_lm->make_state();
  const auto ref = ttt_lm->prefill(ids, plain, {.all_logits = true});
  CHECK(test::relative_error<float>(w0.run(ids, {.all_logits = true}).logits.view(), ref.view()) <= 1e-6);
  // With memory: streaming token by token equals one call, and the memory carries information.
  const rmt::RecurrentWrapper<float> w(rmt::MemoryCell<float>(ttt_lm, rmt::Config::decoder(3, 12), rmt::hf_initial_memory(*ttt_lm, 3, 5)));
  const auto whole = w.run(ids, {.all_logits = true});
  CHECK(whole.n_segments == 4);
  const auto [logits, memory] = stream(w, ids, 1);
  CHECK(test::relative_error<float>(logits.view(), whole.logits.view()) == 0.0);
  CHECK(test::relative_error<float>(memory.view(), whole.final_memory.view()) == 0.0);
  CHECK(test::relative_error<float>(whole.final_memory.view(), w.cell().initial_memory().view()) > 1e-3);
}

TEST_CASE("RMT state copies fork a sequence; reset restarts it; bytes do not grow with length", "[rmt][state]") {
  const auto w = rmt::load<float>(test::fixture("rmt/decoder"));
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 600; ++i) tokens.push_back(std::int32_t((i * 11 + 5) % 37));
  const std::span<const std::int32_t> all(tokens);

  auto s = w.make_state();
  CHECK(s.segments() == 0);
  CHECK(s.readout().empty());
  w.push(all.first(8), s);  // one segment run, two tokens buffered
  CHECK(s.segments() == 1);
  CHECK(s.tokens_pushed() == 8);
  CHECK(s.tokens_processed() == 6);
  auto fork = s.copy();
  w.push(all.subspan(8, 10), s);
  w.push(all.subspan(8, 10), fork);
  w.finish(s);
  w.finish(fork);
  CHECK(test::relative_error<float>(fork.memory(), Tensor<float>::from_view(s.memory()).view()) == 0.0);
  CHECK(test::relative_error<float>(fork.readout().view(), s.readout().view()) == 0.0);
  CHECK(fork.flops.total() == s.flops.total());
  const auto ref = w.run(all.first(18));
  CHECK(test::relative_error<float>(s.memory(), ref.final_memory.view()) == 0.0);

  // After the fork diverges the original is untouched.
  auto a = w.make_state();
  w.push(all.first(12), a);
  auto b = a.copy();
  w.push(all.subspan(100, 6), b);
  CHECK(test::relative_error<float>(a.memory(), Tensor<float>::from_view(b.memory()).view()) > 1e-3);

  s.reset();
  CHECK(s.segments() == 0);
  CHECK(s.tokens_pushed() == 0);
  CHECK(!s.finished());
  CHECK(s.flops.total() == 0);
  CHECK(test::relative_error<float>(s.memory(), w.cell().initial_memory().view()) == 0.0);

  // Constant memory: 100 segments hold the same bytes as 3.
  auto short_run = w.make_state(), long_run = w.make_state();
  w.push(all.first(18), short_run);
  w.push(all, long_run);
  CHECK(long_run.segments() == 99);  // the 100th is held until a token follows (or finish)
  CHECK(long_run.bytes() == short_run.bytes());
  CHECK(long_run.workspace_bytes() == short_run.workspace_bytes());
  CHECK(long_run.peak_bytes() == short_run.peak_bytes());
  CHECK(long_run.bytes() > 0);
  // FLOPs are the sum over segments.
  w.finish(short_run);
  w.finish(long_run);
  CHECK(long_run.flops.total() == Approx(short_run.flops.total() * 100.0 / 3.0).epsilon(1e-12));
}

TEST_CASE("RMT encoder cell matches the PyTorch reference per segment", "[rmt][golden]") {
  const auto w = rmt::load<float>(test::fixture("rmt/encoder"));
  const Checkpoint& g = golden("encoder");
  const auto tokens = test::read_tokens(g);
  CHECK(w.config().layout == rmt::Layout::encoder);
  CHECK(w.config().segment_size == 10);
  CHECK(w.config().alignment == rmt::Alignment::right);
  const auto r = w.run(tokens, {.keep_segments = true});
  REQUIRE(r.n_segments == 3);
  const Index sizes[] = {3, 10, 10};
  for (int k = 0; k < 3; ++k) {
    const auto& seg = r.segments[std::size_t(k)];
    CHECK(seg.tokens.size == sizes[k]);
    const std::string p = "seg" + std::to_string(k) + ".";
    expect_close<float>(seg.memory_in.view(), g, p + "mem_in", 1e-5);
    expect_close<float>(seg.hidden.view(), g, p + "hidden", 1e-5);  // PAD rows included
    expect_close<float>(seg.logits.view(), g, p + "logits", 1e-5);
    expect_close<float>(seg.memory_out.view(), g, p + "mem_out", 1e-5);
  }
  expect_close<float>(r.readout.view(), g, "logits", 1e-5);
  expect_close<float>(r.final_memory.view(), g, "seg2.mem_out", 1e-5);

  // Streaming needs the length in advance (right alignment); token by token equals one call.
  CHECK_THROWS_AS(w.make_state(), Error);
  auto s = w.make_state({.total_tokens = Index(tokens.size())});
  for (std::int32_t t : tokens) w.push(std::span<const std::int32_t>(&t, 1), s);
  w.finish(s);
  CHECK(test::relative_error<float>(s.readout().view(), r.readout.view()) == 0.0);

  const auto wd = rmt::load<double>(test::fixture("rmt/encoder"));
  expect_close<double>(wd.run(tokens).readout.view(), g, "logits", 1e-6);
}

TEST_CASE("plain BERT through the backbone and classifier matches the reference", "[rmt][golden]") {
  const auto m = hf::load_model<float>(test::fixture("rmt/encoder"));
  const Checkpoint& g = golden("encoder");
  const auto ids = test::read_tokens(g, "plain.input_ids");
  const Index n = Index(ids.size());
  Tensor<float> x({n, m.decoder.config.d_model});
  Tensor<std::uint8_t> mask({n, n});
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) mask(i, j) = ids[std::size_t(j)] != 0;  // key padding (PAD = 0)
  auto state = m.decoder.make_state();
  m.decoder.embed_tokens(ids, x.view());
  m.decoder.forward_embeddings(x.view(), state, {MaskKind::custom, mask.view()});
  expect_close<float>(x.view(), g, "plain.hidden", 1e-5);
  Tensor<float> pooled({1, x.cols()});
  m.classifier.pooler.forward(x.view().middle_rows(0, 1), pooled.view());
  for (Index c = 0; c < pooled.cols(); ++c) pooled(0, c) = std::tanh(pooled(0, c));
  expect_close<float>(pooled.view(), g, "plain.pooled", 1e-5);
  expect_close<float>(m.classifier.forward(x.view().middle_rows(0, 1)).view(), g, "plain.logits", 1e-5);

  // m = 0: the encoder cell is the plain model on [CLS] [SEP] x [SEP] PAD.. (same key padding).
  const auto w = rmt::load<float>(test::fixture("rmt/encoder"));
  auto c = w.config();
  c.memory_tokens = 0;
  c.segment_size = c.input_size - 3;
  const rmt::RecurrentWrapper<float> w0(rmt::MemoryCell<float>(w.cell().shared_backbone(), c, Tensor<float>()));
  const std::vector<std::int32_t> x11(ids.begin() + 1, ids.begin() + 12);
  const auto r = w0.run(x11, {.keep_segments = true});
  std::vector<std::int32_t> plain_ids = {1, 2};
  plain_ids.insert(plain_ids.end(), x11.begin(), x11.end());
  plain_ids.push_back(2);
  plain_ids.resize(16, 0);
  Tensor<float> y({16, x.cols()});
  for (Index i = 0; i < 16; ++i)
    for (Index j = 0; j < 16; ++j) mask(i, j) = plain_ids[std::size_t(j)] != 0;
  auto st = m.decoder.make_state();
  m.decoder.embed_tokens(plain_ids, y.view());
  m.decoder.forward_embeddings(y.view(), st, {MaskKind::custom, mask.view()});
  CHECK(test::relative_error<float>(r.segments[0].hidden.view(), y.view()) <= 1e-6);
}

TEST_CASE("RMT checkpoints load through the HF loader and bad ones name every problem", "[rmt][loader][errors]") {
  // The plain HF loader does not know the memory tensor.
  try {
    (void)hf::load_model<float>(test::fixture("rmt/decoder"));
    FAIL("the memory tensor was accepted silently");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("unexpected tensor memory [3, 16]") != std::string::npos);
  }
  // A broken RMT checkpoint: mis-shaped memory and a missing backbone tensor, reported together.
  test::TempDir dir;
  std::filesystem::copy_file(test::fixture("rmt/decoder/config.json"), dir.path() / "config.json");
  const Checkpoint good = Checkpoint::open(test::fixture("rmt/decoder"));
  safetensors::Writer wr;
  for (const std::string& n : good.names()) {
    if (n == "ln_f.bias") continue;
    if (n == "memory") wr.add(n, Tensor<float>({2, 16}));
    else wr.add(n, good.read<float>(n));
  }
  wr.write((dir.path() / "model.safetensors").string());
  try {
    (void)rmt::load<float>(dir.path());
    FAIL("loaded a broken RMT checkpoint");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("2 problem(s)") != std::string::npos);
    CHECK(msg.find("tensor memory has shape [2, 16], expected [3, 16]") != std::string::npos);
    CHECK(msg.find("missing tensor ln_f.bias [16]") != std::string::npos);
  }
  // A config without an "rmt" object, and bad rmt values.
  CHECK_THROWS_AS(rmt::load<float>(test::fixture("gpt2_tiny")), Error);
  CHECK_THROWS_AS(rmt::config_from_json(json::parse(R"({"num_mem_tokens":2,"segment_size":4,"layout":"sideways"})")), Error);
  CHECK_THROWS_AS(rmt::config_from_json(json::parse(R"({"num_mem_tokens":2,"segment_size":4,"memory_mask":"full"})")), Error);
  CHECK_THROWS_AS(rmt::config_from_json(json::parse(R"({"segment_size":4})")), Error);
  const auto bidir = rmt::config_from_json(json::parse(R"({"num_mem_tokens":2,"segment_size":4,"memory_mask":"bidirectional"})"));
  CHECK(bidir.memory_mask == rmt::MemoryMask::bidirectional);
  CHECK(bidir.alignment == rmt::Alignment::left);
}

TEST_CASE("RMT input errors", "[rmt][errors]") {
  const auto w = rmt::load<float>(test::fixture("rmt/decoder"));
  const auto& bb = w.cell().shared_backbone();
  auto make = [&](rmt::Config c, Index mem_rows) {
    return rmt::MemoryCell<float>(bb, c, Tensor<float>({mem_rows, 16}));
  };
  CHECK_THROWS_AS(make(rmt::Config::decoder(-1, 6), 0), Error);           // m < 0
  CHECK_THROWS_AS(make(rmt::Config::decoder(3, 0), 3), Error);            // empty segments
  CHECK_THROWS_AS(make(rmt::Config::decoder(3, 27), 3), Error);           // 27 + 6 > 32 positions
  CHECK_NOTHROW(make(rmt::Config::decoder(3, 26), 3));                    // 26 + 6 = 32 fits
  CHECK_THROWS_AS(make(rmt::Config::decoder(3, 6), 2), Error);            // memory of the wrong shape
  CHECK_THROWS_AS(make(rmt::Config::decoder(4, 3), 4), Error);            // segment smaller than the memory
  CHECK_THROWS_AS(make(rmt::Config::encoder(3, 16, 1, 2, 0), 3), Error);  // encoder layout on a causal backbone
  try {
    (void)make(rmt::Config::decoder(3, 27), 3);
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("exceeds the backbone's max positions 32") != std::string::npos);
  }
  const auto enc = rmt::load<float>(test::fixture("rmt/encoder"));
  auto ec = enc.config();
  ec.memory_mask = rmt::MemoryMask::bidirectional;
  CHECK_THROWS_AS(rmt::MemoryCell<float>(enc.cell().shared_backbone(), ec, enc.cell().initial_memory().copy()), Error);
  ec = enc.config();
  ec.segment_size = 11;  // must be input_size - m - 3 = 10
  CHECK_THROWS_AS(rmt::MemoryCell<float>(enc.cell().shared_backbone(), ec, enc.cell().initial_memory().copy()), Error);

  CHECK_THROWS_AS(w.run(std::vector<std::int32_t>{}), Error);
  CHECK_THROWS_AS(w.run(std::vector<std::int32_t>{1, 2, 37}), Error);  // id outside the vocabulary
  auto s = w.make_state();
  CHECK_THROWS_AS(w.finish(s), Error);  // nothing pushed
  w.push(std::vector<std::int32_t>{1, 2}, s);
  w.finish(s);
  CHECK_THROWS_AS(w.push(std::vector<std::int32_t>{1}, s), Error);  // finished
  CHECK_THROWS_AS(w.finish(s), Error);
  auto t = w.make_state({.total_tokens = 4});
  CHECK_THROWS_AS(w.push(std::vector<std::int32_t>(5, 1), t), Error);  // more than declared
  auto u = w.make_state({.total_tokens = 4});
  w.push(std::vector<std::int32_t>(3, 1), u);
  CHECK_THROWS_AS(w.finish(u), Error);  // fewer than declared
  const auto other = rmt::load<float>(test::fixture("rmt/decoder"));
  auto foreign = other.make_state();
  CHECK_THROWS_AS(w.push(std::vector<std::int32_t>{1}, foreign), Error);
  CHECK_THROWS_AS(w.make_state({.total_tokens = 0}), Error);
  rmt::MemoryCell<float>::Scratch stray;  // not made by the cell
  CHECK_THROWS_AS(w.cell().forward(std::vector<std::int32_t>{1}, w.cell().initial_memory().view(), stray), Error);
  auto sc = w.cell().make_scratch();
  CHECK_THROWS_AS(w.cell().forward(std::vector<std::int32_t>(7, 1), w.cell().initial_memory().view(), sc), Error);  // > segment_size
  CHECK_NOTHROW(w.cell().forward(std::vector<std::int32_t>(6, 1), w.cell().initial_memory().view(), sc));
}

TEST_CASE("RMT FLOP counter agrees with the analytic formula", "[rmt][flops]") {
  // The counter counts what runs: causal pairs, no softmax term, the LM head on the last content
  // token of each segment only.
  const auto w = rmt::load<float>(test::fixture("rmt/decoder"));
  const auto r = w.run(test::read_tokens(golden("decoder")));
  const rmt::flops_report::ModelShape shape{"fixture", 37, 2, 16, 2, 64};
  const rmt::flops_report::Accounting causal_bodies{true, false, false};
  double expected = 0;
  for (double s_k : {6.0, 6.0, 3.0}) {
    const double n = s_k + 6;
    expected += rmt::flops_report::segment_flops(shape, s_k, {6, 3}, causal_bodies)  //
                - 2 * 3 * 2 * n * (n + 1) / 2                                          // no softmax: L 3 h pairs
                + 2.0 * 37 * 16;                                                       // last-token head
  }
  CHECK(r.flops.total() == Approx(expected).epsilon(1e-12));
}

TEST_CASE("FLOPs report reproduces the scaling report's ratios", "[rmt][flops]") {
  namespace fr = rmt::flops_report;
  const auto& opt125 = fr::kOpt.front();
  const auto& opt175 = fr::kOpt.back();
  const double two21 = double(1 << 21);  // 4096 segments of 512
  // x29 for OPT-175B at ~2M tokens, whatever the vocabulary bookkeeping (28.5 .. 29.4).
  for (const auto& acc : {fr::kChinchilla, fr::kOneVocabMatmul, fr::kBodies})
    for (double n : {fr::kReportTokens, two21}) {
      const double x = fr::speedup(opt175, n, fr::kReportSegments, acc);
      INFO("OPT-175B at " << n << ": x" << x);
      CHECK(std::lround(x) == 29);
    }
  // x295 for OPT-125M needs one vocabulary matmul (the LM head; a lookup embedding) and N = 2^21:
  // 294.8. At the text's 2,048,000 tokens the same count gives 288, Chinchilla's (embedding and head
  // as matmuls) 223 and bodies only 405 (rmt.md 8.4).
  CHECK(fr::speedup(opt125, two21, fr::kReportSegments, fr::kOneVocabMatmul) == Approx(294.77).epsilon(1e-3));
  CHECK(std::lround(fr::speedup(opt125, two21, fr::kReportSegments, fr::kOneVocabMatmul)) == 295);
  CHECK(fr::speedup(opt125, fr::kReportTokens, fr::kReportSegments, fr::kOneVocabMatmul) == Approx(287.88).epsilon(1e-3));
  CHECK(fr::speedup(opt125, fr::kReportTokens, fr::kReportSegments, fr::kChinchilla) == Approx(223.37).epsilon(1e-3));
  CHECK(fr::speedup(opt125, fr::kReportTokens, fr::kReportSegments, fr::kBodies) == Approx(405.11).epsilon(1e-3));
  // A causal count (upper triangle skipped, as engram's kernels do) halves full attention's
  // quadratic term: OPT-175B x15, OPT-125M x150.
  fr::Accounting causal = fr::kOneVocabMatmul;
  causal.causal = true;
  CHECK(std::lround(fr::speedup(opt175, fr::kReportTokens, fr::kReportSegments, causal)) == 15);
  CHECK(std::lround(fr::speedup(opt125, fr::kReportTokens, fr::kReportSegments, causal)) == 150);

  // Figure 3's axes: FLOPs relative to one 512-token pass; RMT is the line N / 512.
  for (const auto& m : fr::kOpt) {
    const double one = fr::model_flops(m, 512, fr::kOneVocabMatmul);
    CHECK(fr::rmt_flops(m, fr::kReportTokens, fr::kReportSegments, fr::kOneVocabMatmul) / one == Approx(4000).epsilon(1e-12));
    // Larger models are near-linear longer: the ratio at 32k shrinks with size (FFN dominates).
    CHECK(fr::speedup(m, 32768, fr::kReportSegments, fr::kChinchilla) > 1.0);
  }
  for (std::size_t i = 1; i < fr::kOpt.size(); ++i)
    CHECK(fr::speedup(fr::kOpt[i], 32768, fr::kReportSegments, fr::kChinchilla) <
          fr::speedup(fr::kOpt[i - 1], 32768, fr::kReportSegments, fr::kChinchilla));
  // With memory tokens RMT costs more than full attention on one segment and less from two on.
  const fr::Segmentation gpt2_babilong{512, 16, rmt::Layout::decoder};
  const fr::ModelShape gpt2{"GPT-2", 50257, 12, 768, 12, 3072};
  CHECK(fr::speedup(gpt2, 512, gpt2_babilong, fr::kOneVocabMatmul) < 1.0);
  CHECK(fr::speedup(gpt2, 2048, gpt2_babilong, fr::kOneVocabMatmul) > 1.0);
  // rmt.md 8.4 anchors: GPT-2 small, m = 16, s = 480 (n' = 512), bodies dense + head on content
  // rows, N = 983,040: full 3.63e16 vs RMT 2.74e14 (x132).
  const fr::Segmentation anchor{480, 16, rmt::Layout::decoder};
  CHECK(fr::full_flops(gpt2, 983040, fr::kOneVocabMatmul) == Approx(3.63e16).epsilon(5e-3));
  CHECK(fr::rmt_flops(gpt2, 983040, anchor, fr::kOneVocabMatmul) == Approx(2.74e14).epsilon(5e-3));
  // BERT-base, one 512-token segment, bodies: 96.75 GFLOP.
  const fr::ModelShape bert{"BERT-base", 28996, 12, 768, 12, 3072};
  CHECK(fr::model_flops(bert, 512, fr::kBodies) == Approx(96.75e9).epsilon(1e-3));
  // A short last segment is counted at its own size.
  CHECK(fr::rmt_flops(gpt2, 1000, gpt2_babilong, fr::kBodies) ==
        Approx(fr::segment_flops(gpt2, 512, gpt2_babilong, fr::kBodies) + fr::segment_flops(gpt2, 488, gpt2_babilong, fr::kBodies)));
}
