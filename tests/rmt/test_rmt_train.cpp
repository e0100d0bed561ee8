// RMT training: gradients through the memory across segments (decoder and encoder layouts, full
// and truncated BPTT) against the independent autograd reference (tests/reference/rmt_grad_ref.py)
// and central finite differences; recomputation equals keeping every activation; input errors.
#include <filesystem>

#include "engram/nn/init.hpp"
#include "engram/rmt/bptt.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/loader.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

const Checkpoint& grad_golden(const std::string& layout) {
  static const Checkpoint dec = Checkpoint::open(test::fixture("rmt_grad/decoder/golden.safetensors"));
  static const Checkpoint enc = Checkpoint::open(test::fixture("rmt_grad/encoder/golden.safetensors"));
  return layout == "decoder" ? dec : enc;
}

// The gradients `prefix`grad.<name> of a golden file as an RMT model of the fixture's layout (the
// loader maps the HF names, transposes Conv1D weights and takes the encoder's memory rows).
rmt::RecurrentWrapper<double> golden_grads(const std::string& dir, const std::string& prefix) {
  const auto file = safetensors::File::open(test::fixture(dir + "/golden.safetensors").string());
  safetensors::Writer w;
  for (const auto& t : file.tensors())
    if (t.name.rfind(prefix, 0) == 0) w.add(t.name.substr(prefix.size()), file.read<double>(t.name), safetensors::DType::F64);
  test::TempDir tmp;
  std::filesystem::copy_file(test::fixture(dir + "/config.json"), tmp.path() / "config.json");
  w.write((tmp.path() / "model.safetensors").string());
  return rmt::load<double>(tmp.path());
}

// The fixture's shifted labels: logits[t] predicts reference labels[t + 1] (train::kIgnore at the end).
rmt::TrainBatch decoder_batch(const Checkpoint& g, const std::string& labels) {
  rmt::TrainBatch b;
  b.tokens = test::read_tokens(g);
  const auto ref = test::read_tokens(g, labels);
  b.n_seqs = 1, b.length = Index(b.tokens.size());
  for (std::size_t t = 0; t < ref.size(); ++t) b.labels.push_back(t + 1 < ref.size() ? ref[t + 1] : train::kIgnore);
  return b;
}

// Worst per-tensor max |ours - golden| / max |golden| over every parameter (a golden tensor of zeros
// must be matched to 1e-14 absolute); `skip` names parameters compared separately.
template <class T>
double gradient_error(rmt::MemoryCell<T>& cell, Gradients<T>& g, rmt::RecurrentWrapper<double>& ref, std::string& worst,
                      const std::string& skip = "") {
  std::vector<std::pair<std::string, Tensor<double>*>> golden;
  const_cast<rmt::MemoryCell<double>&>(ref.cell()).visit_parameters([&](const std::string& n, Tensor<double>& t) { golden.push_back({n, &t}); });
  double err = 0;
  std::size_t i = 0;
  cell.visit_parameters([&](const std::string& name, Tensor<T>& p) {
    REQUIRE(i < golden.size());
    REQUIRE(golden[i].first == name);
    const Tensor<double>& want = *golden[i++].second;
    if (name == skip) return;
    const Tensor<T>* got = g.find(p);
    REQUIRE(got != nullptr);
    double diff = 0, scale = 0;
    for (Index r = 0; r < want.rows(); ++r)
      for (Index c = 0; c < want.cols(); ++c) {
        diff = std::max(diff, std::abs(double((*got)(r, c)) - want(r, c)));
        scale = std::max(scale, std::abs(want(r, c)));
      }
    const double e = scale > 0 ? diff / scale : diff * 1e-14 / 1e-14;
    if (scale == 0) CHECK(diff <= 1e-14);
    if (scale > 0 && e > err) err = e, worst = name;
  });
  CHECK(i == golden.size());
  return err;
}

template <class T>
void check_decoder_variant(const std::string& variant, const std::string& labels, Index k2, double tolerance) {
  auto w = rmt::load<T>(test::fixture("rmt_grad/decoder"));
  auto& cell = const_cast<rmt::MemoryCell<T>&>(w.cell());
  const Checkpoint& g = grad_golden("decoder");
  const rmt::TrainBatch batch = decoder_batch(g, labels);
  Gradients<T> grads(cell);
  rmt::BpttBuffers<T> buf;
  const auto s = rmt::bptt_step<T>(cell, batch, &grads, buf, T(1.0 / double(batch.count(rmt::Layout::decoder))), {.k2 = k2});
  CHECK(s.segments == 3);
  const double ref_loss = g.read<double>(variant + ".loss").data()[0];
  INFO(variant << ": loss " << s.mean_loss() << ", reference " << ref_loss);
  CHECK(std::abs(s.mean_loss() - ref_loss) <= tolerance * std::abs(ref_loss));
  auto ref = golden_grads("rmt_grad/decoder", variant + ".grad.");
  std::string worst;
  const double e = gradient_error(cell, grads, ref, worst);
  INFO(variant << ": worst gradient " << worst << ", relative error " << e);
  CHECK(e <= tolerance);
}

// A random GPT-2-shaped RMT whose parameters are all non-trivial (norms and biases random too).
template <class T>
rmt::RecurrentWrapper<T> random_rmt(rmt::Config c, std::uint64_t seed, const std::string& arch = "gpt2") {
  ModelConfig mc = arch == "gpt2" ? ModelConfig::gpt2(29, 12, 2, 3, 40)
                   : arch == "bert" ? ModelConfig::bert(29, 12, 2, 3, 20, 16)
                                    : ModelConfig::llama(29, 12, 2, 3, 1, 20);
  auto m = Decoder<T>::create(mc);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 0.3);
  m.visit_parameters([&](const std::string& name, Tensor<T>& t) {
    const bool norm = name.find("norm") != std::string::npos && name.ends_with(".weight");
    for (Index r = 0; r < t.rows(); ++r)
      for (Index cc = 0; cc < t.cols(); ++cc) t.row(r)[cc] = T((norm ? 1.0 : 0.0) + normal(rng));
  });
  SequenceClassifier<T> head;
  if (arch == "bert") {
    head.pooler = Linear<T>(12, 12, true), head.classifier = Linear<T>(12, 3, true);
    for (Linear<T>* l : {&head.pooler, &head.classifier}) {
      l->weight = test::random_tensor<T>(l->weight.shape(), seed + 2, 0.4);
      l->bias = test::random_tensor<T>(l->bias.shape(), seed + 3, 0.2);
    }
  }
  auto bb = std::make_shared<const Decoder<T>>(std::move(m));
  return rmt::RecurrentWrapper<T>(rmt::MemoryCell<T>(bb, c, test::random_tensor<T>({c.memory_tokens, 12}, seed + 1, 0.5), std::move(head)));
}

// L(theta) for the finite differences: mean loss of a forward-only step.
template <class T>
double loss_of(const rmt::MemoryCell<T>& cell, const rmt::TrainBatch& b) {
  rmt::BpttBuffers<T> buf;
  return rmt::bptt_step<T>(cell, b, nullptr, buf, T(1), {.backward = false}).mean_loss();
}

}  // namespace

TEST_CASE("RMT decoder BPTT gradients match the autograd reference", "[rmt][train][golden]") {
  for (auto [variant, labels, k2] : {std::tuple<const char*, const char*, Index>{"full", "labels", -1}, {"k2_1", "labels", 1},
                                     {"k2_2", "labels", 2}, {"answer.full", "answer.labels", -1}, {"answer.k2_1", "answer.labels", 1}}) {
    INFO(variant);
    check_decoder_variant<double>(variant, labels, k2, 1e-8);
    check_decoder_variant<float>(variant, labels, k2, 1e-5);
  }
}

TEST_CASE("RMT truncated BPTT: k2 >= segments is full BPTT, k2 = 1 cuts the memory gradient", "[rmt][train]") {
  auto w = rmt::load<double>(test::fixture("rmt_grad/decoder"));
  auto& cell = const_cast<rmt::MemoryCell<double>&>(w.cell());
  const rmt::TrainBatch lm = decoder_batch(grad_golden("decoder"), "labels"), answer = decoder_batch(grad_golden("decoder"), "answer.labels");
  auto grads_of = [&](const rmt::TrainBatch& b, Index k2) {
    Gradients<double> g(cell);
    rmt::BpttBuffers<double> buf;
    rmt::bptt_step<double>(cell, b, &g, buf, 1.0 / double(b.count(rmt::Layout::decoder)), {.k2 = k2});
    return g;
  };
  auto max_diff = [](const Gradients<double>& a, const Gradients<double>& b) {
    double e = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
      for (Index r = 0; r < a.entries()[i].grad.rows(); ++r)
        for (Index c = 0; c < a.entries()[i].grad.cols(); ++c)
          e = std::max(e, std::abs(a.entries()[i].grad(r, c) - b.entries()[i].grad(r, c)));
    return e;
  };
  const auto full = grads_of(lm, -1);
  CHECK(max_diff(full, grads_of(lm, 3)) == 0.0);
  CHECK(max_diff(full, grads_of(lm, 7)) == 0.0);
  const auto cut = grads_of(answer, 1);
  double mem = 0;
  const Tensor<double>& gm = cut.at("memory");
  for (Index r = 0; r < gm.rows(); ++r)
    for (Index c = 0; c < gm.cols(); ++c) mem = std::max(mem, std::abs(gm(r, c)));
  CHECK(mem == 0.0);  // the answer's segment reads a detached memory
  CHECK(max_diff(grads_of(answer, -1), cut) > 1e-6);
  // Detaching never changes the forward.
  rmt::BpttBuffers<double> buf;
  Gradients<double> g(cell);
  const double l_full = rmt::bptt_step<double>(cell, lm, &g, buf, 1.0, {.k2 = -1}).loss_sum;
  const double l_cut = rmt::bptt_step<double>(cell, lm, &g, buf, 1.0, {.k2 = 1}).loss_sum;
  CHECK(l_full == l_cut);
}

TEST_CASE("RMT encoder BPTT gradients match the autograd reference", "[rmt][train][golden]") {
  for (auto [variant, k2] : {std::pair<const char*, Index>{"full", -1}, {"k2_1", 1}}) {
    INFO(variant);
    auto w = rmt::load<double>(test::fixture("rmt_grad/encoder"));
    auto& cell = const_cast<rmt::MemoryCell<double>&>(w.cell());
    const Checkpoint& g = grad_golden("encoder");
    rmt::TrainBatch b;
    b.tokens = test::read_tokens(g);
    b.n_seqs = 1, b.length = Index(b.tokens.size());
    b.classes = {std::int32_t(g.read<std::int64_t>("label").data()[0])};
    Gradients<double> grads(cell);
    rmt::BpttBuffers<double> buf;
    const auto s = rmt::bptt_step<double>(cell, b, &grads, buf, 1.0, {.k2 = k2});
    CHECK(s.segments == 3);
    CHECK(std::abs(s.mean_loss() - g.read<double>(std::string(variant) + ".loss").data()[0]) <= 1e-10);
    auto ref = golden_grads("rmt_grad/encoder", std::string(variant) + ".grad.");
    std::string worst;
    double e = gradient_error(cell, grads, ref, worst, "embed.weight");
    INFO("worst gradient " << worst << ", relative error " << e);
    CHECK(e <= 1e-8);
    // The word embeddings: rows of real ids as the reference; the memory rows' gradient is the
    // memory's (engram keeps the memory apart from the table while training).
    const Tensor<double>& ge = grads.at("embed.weight");
    const Tensor<double>& re = ref.backbone().embed.weight;
    const Tensor<double>& gmem = grads.at("memory");
    const Index V = re.rows(), m = 3;
    double diff = 0, scale = 0;
    for (Index r = 0; r < V; ++r)
      for (Index c = 0; c < re.cols(); ++c) {
        const double ours = r < V - m ? ge(r, c) : gmem(r - (V - m), c);
        diff = std::max(diff, std::abs(ours - re(r, c)));
        scale = std::max(scale, std::abs(re(r, c)));
        if (r >= V - m) CHECK(ge(r, c) == 0.0);
      }
    CHECK(diff <= 1e-8 * scale);
  }
}

TEST_CASE("RMT training with recomputation equals keeping every segment's activations", "[rmt][train]") {
  for (auto layout : {std::string("decoder"), std::string("encoder")}) {
    INFO(layout);
    auto w = rmt::load<double>(test::fixture("rmt_grad/" + layout));
    auto& cell = const_cast<rmt::MemoryCell<double>&>(w.cell());
    rmt::TrainBatch b;
    b.n_seqs = 3, b.length = 23;
    for (Index i = 0; i < b.n_seqs * b.length; ++i) b.tokens.push_back(std::int32_t(3 + (i * 7 + i / 5) % 34));
    for (Index i = 0; i < b.n_seqs * b.length; ++i) b.labels.push_back(i % 3 == 0 ? train::kIgnore : b.tokens[std::size_t((i * 5) % (b.n_seqs * b.length))]);
    b.classes = {1, 4, 2};
    for (Index k2 : {Index(-1), Index(2)}) {
      Gradients<double> g1(cell), g2(cell);
      rmt::BpttBuffers<double> buf;
      const auto s1 = rmt::bptt_step<double>(cell, b, &g1, buf, 0.1, {.k2 = k2, .recompute = true});
      const std::size_t tape_recompute = buf.step.tape.peak_bytes();
      rmt::BpttBuffers<double> buf2;
      const auto s2 = rmt::bptt_step<double>(cell, b, &g2, buf2, 0.1, {.k2 = k2, .recompute = false});
      CHECK(s1.loss_sum == s2.loss_sum);
      for (std::size_t i = 0; i < g1.size(); ++i) {
        INFO(g1.entries()[i].name);
        double diff = 0;
        for (Index r = 0; r < g1.entries()[i].grad.rows(); ++r)
          for (Index c = 0; c < g1.entries()[i].grad.cols(); ++c)
            diff = std::max(diff, std::abs(g1.entries()[i].grad(r, c) - g2.entries()[i].grad(r, c)));
        CHECK(diff == 0.0);  // the same arithmetic in the same order
      }
      // Recomputation keeps one segment's activations; without it the tape holds all of them.
      CHECK(tape_recompute * 2 < buf2.step.tape.peak_bytes());
    }
  }
}

TEST_CASE("RMT BPTT gradients agree with central finite differences", "[rmt][train][fd]") {
  // Awkward shapes: 3 sequences of 17 tokens in segments of 5 (the last one short), an LM loss on
  // some rows only; a GPT-2 backbone, a RoPE/RMSNorm/SwiGLU one with bidirectional memory blocks,
  // and the encoder layout (BERT, key padding in the short first segment, classifier readout).
  for (const char* arch : {"gpt2", "llama", "bert"}) {
    INFO(arch);
    const bool enc = std::string(arch) == "bert";
    auto w = enc ? random_rmt<double>(rmt::Config::encoder(2, 9, 0, 1, 2), 13, arch)
                 : random_rmt<double>(rmt::Config::decoder(2, 5, std::string(arch) == "llama" ? rmt::MemoryMask::bidirectional
                                                                                              : rmt::MemoryMask::causal),
                                      11, arch);
    auto& cell = const_cast<rmt::MemoryCell<double>&>(w.cell());
    rmt::TrainBatch b;
    b.n_seqs = 3, b.length = 17;
    for (Index i = 0; i < 51; ++i) b.tokens.push_back(std::int32_t(3 + (i * 11 + 3) % 26));
    for (Index i = 0; i < 51; ++i) b.labels.push_back(i % 4 == 1 ? train::kIgnore : std::int32_t((i * 5 + 1) % 29));
    b.classes = {0, 2, 1};
    Gradients<double> g(cell);
    rmt::BpttBuffers<double> buf;
    const auto layout = cell.config().layout;
    rmt::bptt_step<double>(cell, b, &g, buf, 1.0 / double(b.count(layout)));
    // Along a random direction over every parameter: (L(p + h u) - L(p - h u)) / 2h = <g, u>.
    std::mt19937_64 rng(5);
    std::normal_distribution<double> normal;
    std::vector<Tensor<double>> u;
    double predicted = 0;
    for (auto& e : g.entries()) {
      u.push_back(Tensor<double>(e.param->shape()));
      for (Index r = 0; r < e.grad.rows(); ++r)
        for (Index c = 0; c < e.grad.cols(); ++c) u.back()(r, c) = normal(rng), predicted += u.back()(r, c) * e.grad(r, c);
    }
    auto shift = [&](double h) {
      for (std::size_t i = 0; i < g.size(); ++i)
        for (Index r = 0; r < u[i].rows(); ++r)
          for (Index c = 0; c < u[i].cols(); ++c) (*g.entries()[i].param)(r, c) += h * u[i](r, c);
    };
    const double h = 1e-5;
    shift(h);
    const double lp = loss_of(cell, b);
    shift(-2 * h);
    const double lm = loss_of(cell, b);
    shift(h);
    const double fd = (lp - lm) / (2 * h);
    INFO("directional derivative: finite differences " << fd << ", backward " << predicted);
    CHECK(std::abs(fd - predicted) <= 1e-6 * std::max(1.0, std::abs(fd)));
  }
}

TEST_CASE("RMT training input errors", "[rmt][train][errors]") {
  auto w = rmt::load<float>(test::fixture("rmt_grad/decoder"));
  auto& cell = const_cast<rmt::MemoryCell<float>&>(w.cell());
  Gradients<float> g(cell);
  rmt::BpttBuffers<float> buf;
  rmt::TrainBatch b;
  b.n_seqs = 1, b.length = 4, b.tokens = {1, 2, 3, 4}, b.labels = {2, 3, 4, -100};
  CHECK_NOTHROW(rmt::bptt_step<float>(cell, b, &g, buf, 1.f));
  auto bad = b;
  bad.tokens = {1, 2, 3};
  CHECK_THROWS_AS(rmt::bptt_step<float>(cell, bad, &g, buf, 1.f), Error);  // token count
  bad = b, bad.tokens[2] = 37;
  CHECK_THROWS_AS(rmt::bptt_step<float>(cell, bad, &g, buf, 1.f), Error);  // id outside the vocabulary
  bad = b, bad.labels[0] = 40;
  CHECK_THROWS_AS(rmt::bptt_step<float>(cell, bad, &g, buf, 1.f), Error);  // label outside the vocabulary
  bad = b, bad.labels.pop_back();
  CHECK_THROWS_AS(rmt::bptt_step<float>(cell, bad, &g, buf, 1.f), Error);
  CHECK_THROWS_AS(rmt::bptt_step<float>(cell, b, &g, buf, 1.f, {.k2 = 0}), Error);
  bad = b, bad.n_seqs = 0;
  CHECK_THROWS_AS(rmt::bptt_step<float>(cell, bad, &g, buf, 1.f), Error);
  auto enc = rmt::load<float>(test::fixture("rmt_grad/encoder"));
  rmt::TrainBatch e;
  e.n_seqs = 1, e.length = 4, e.tokens = {3, 4, 5, 6}, e.classes = {6};  // 6 labels: class 6 does not exist
  CHECK_THROWS_AS(rmt::bptt_step<float>(enc.cell(), e, nullptr, buf, 1.f), Error);
  e.classes = {};
  CHECK_THROWS_AS(rmt::bptt_step<float>(enc.cell(), e, nullptr, buf, 1.f), Error);
}
