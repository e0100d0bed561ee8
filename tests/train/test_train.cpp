// Training of whole models: gradients against finite differences (double) and against the
// independent PyTorch autograd reference (tests/reference/train_ref.py), AdamW steps, gradient
// checkpointing, gradient accumulation, resume, save/load, and the errors of bad input.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engram/io/hf_save.hpp"
#include "engram/nn/init.hpp"
#include "engram/train/trainer.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

// Small configurations that exercise every path: GQA + RoPE + SwiGLU, learned positions + tied head
// + biases + LayerNorm, and a post-norm bidirectional encoder.
ModelConfig small_llama() {
  ModelConfig c = ModelConfig::llama(23, 16, 2, 4, 2, 24);
  c.max_positions = 64;
  return c;
}
ModelConfig small_gpt2() { return ModelConfig::gpt2(19, 16, 2, 2, 32); }
ModelConfig small_bert() { return ModelConfig::bert(17, 16, 2, 2, 20, 16); }

template <class T>
Decoder<T> random_model(const ModelConfig& c, std::uint64_t seed, double std = 0.3) {
  Decoder<T> m = Decoder<T>::create(c);
  init_random(m, seed, std);
  // Non-trivial norm parameters, so their gradients are exercised too.
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<double> n(0.0, 0.1);
  m.visit_parameters([&](const std::string& name, Tensor<T>& t) {
    if (name.find("norm") == std::string::npos && name.find("bias") == std::string::npos) return;
    for (Index i = 0; i < t.numel(); ++i) t.data()[i] += T(n(rng));
  });
  return m;
}

train::Batch random_batch(Index vocab, Index n_seqs, Index seq_len, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  train::Batch b;
  b.n_seqs = n_seqs, b.seq_len = seq_len;
  for (Index i = 0; i < b.rows(); ++i) b.tokens.push_back(std::int32_t(rng() % std::uint64_t(vocab)));
  for (Index i = 0; i < b.rows(); ++i) b.labels.push_back(i % 5 == 3 ? train::kIgnore : std::int32_t(rng() % std::uint64_t(vocab)));
  return b;
}

// Mean loss of a batch (forward only).
template <class T>
double mean_loss(const Decoder<T>& m, const train::Batch& b, const train::StepOptions& o = {}) {
  train::StepBuffers<T> buf;
  train::StepOptions fo = o;
  fo.backward = false;
  const auto s = train::lm_step<T>(m, b, nullptr, buf, T(0), fo);
  return s.loss_sum / double(s.count);
}

template <class T>
Gradients<T> gradients_of(Decoder<T>& m, const train::Batch& b, const train::StepOptions& o = {}) {
  Gradients<T> g(m);
  train::StepBuffers<T> buf;
  train::lm_step<T>(m, b, &g, buf, T(1.0 / double(b.count())), o);
  return g;
}

// Central differences of the mean loss on a few entries of every parameter; the error is relative
// to the largest gradient of that parameter.
void check_fd(Decoder<double>& m, const train::Batch& b, const std::string& what) {
  Gradients<double> g = gradients_of(m, b);
  std::mt19937_64 rng(7);
  for (auto& e : g.entries()) {
    double scale = 0;
    for (Index i = 0; i < e.grad.numel(); ++i) scale = std::max(scale, std::abs(e.grad.data()[i]));
    for (int k = 0; k < 4; ++k) {
      const Index i = Index(rng() % std::uint64_t(e.grad.numel()));
      // Rank-1 tensors are dense; matrices have padded rows: address by (row, col).
      const Index r = i / e.param->cols(), c = i % e.param->cols();
      double& p = e.param->row(r)[c];
      const double saved = p, h = 1e-5;
      p = saved + h;
      const double up = mean_loss(m, b);
      p = saved - h;
      const double down = mean_loss(m, b);
      p = saved;
      const double fd = (up - down) / (2 * h), an = e.grad.row(r)[c];
      INFO(what << ": " << e.name << "[" << r << ", " << c << "] analytic " << an << ", finite differences " << fd << ", max |grad| " << scale);
      REQUIRE(std::abs(fd - an) <= 1e-6 * std::max(scale, 1e-3));
    }
  }
}

template <class T>
double max_rel_diff(const Gradients<T>& a, const Gradients<T>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& ga = a.entries()[i].grad;
    const auto& gb = b.entries()[i].grad;
    double scale = 1e-30, err = 0;
    for (Index r = 0; r < ga.rows(); ++r)
      for (Index c = 0; c < ga.cols(); ++c) {
        scale = std::max(scale, std::abs(double(ga.row(r)[c])));
        err = std::max(err, std::abs(double(ga.row(r)[c]) - double(gb.row(r)[c])));
      }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

}  // namespace

TEST_CASE("train: whole-model gradients match central finite differences in double", "[train][fd]") {
  SECTION("llama: GQA, RoPE, SwiGLU, untied head") {
    auto m = random_model<double>(small_llama(), 1);
    check_fd(m, random_batch(23, 2, 7, 2), "llama");
  }
  SECTION("gpt2: learned positions, tied head, biases, LayerNorm") {
    auto m = random_model<double>(small_gpt2(), 3);
    check_fd(m, random_batch(19, 2, 9, 4), "gpt2");
  }
  SECTION("bert: post-norm bidirectional encoder, token types, embedding norm (LM loss)") {
    ModelConfig c = small_bert();
    c.tie_embeddings = true;
    auto m = random_model<double>(c, 5);
    check_fd(m, random_batch(17, 1, 11, 6), "bert");
  }
}

TEST_CASE("train: forward_train equals the inference prefill", "[train][invariant]") {
  for (const ModelConfig& c : {small_llama(), small_gpt2()}) {
    const auto m = random_model<float>(c, 11, 0.1);
    const train::Batch b = random_batch(c.vocab_size, 2, 13, 12);
    train::StepBuffers<float> buf;
    TrainContext<float> ctx = buf.context(m, b.n_seqs, b.seq_len, nullptr);
    View<float> x = buf.hidden(b.rows(), c.d_model);
    m.embed_tokens(b.tokens, x);
    m.forward_train(x, ctx);
    Tensor<float> logits({b.rows(), c.vocab_size});
    m.logits(x, logits.view());
    for (Index s = 0; s < b.n_seqs; ++s) {
      auto state = m.make_state();
      const Tensor<float> ref = m.prefill(std::span(b.tokens).subspan(std::size_t(s * b.seq_len), std::size_t(b.seq_len)), state, {.all_logits = true});
      INFO(c.architecture << " sequence " << s);
      REQUIRE(test::relative_error<float>(logits.view().middle_rows(s * b.seq_len, b.seq_len), ref.view()) <= 1e-5);
    }
  }
}

TEST_CASE("train: a sliding-window model: forward_train equals prefill equals decode, the cache stays bounded", "[train][window]") {
  ModelConfig c = small_llama();
  c.sliding_window = 5;
  const auto m = random_model<float>(c, 13, 0.2);
  const train::Batch b = random_batch(c.vocab_size, 1, 23, 14);
  train::StepBuffers<float> buf;
  TrainContext<float> ctx = buf.context(m, 1, b.seq_len, nullptr);
  View<float> x = buf.hidden(b.rows(), c.d_model);
  m.embed_tokens(b.tokens, x);
  m.forward_train(x, ctx);
  buf.tape.clear();
  Tensor<float> logits({b.rows(), c.vocab_size});
  m.logits(x, logits.view());
  auto whole = m.make_state();
  REQUIRE(test::relative_error<float>(logits.view(), m.prefill(b.tokens, whole, {.all_logits = true}).view()) <= 1e-5);
  auto step = m.make_state();
  for (Index t = 0; t < b.seq_len; ++t) {
    const Tensor<float> one = m.decode(b.tokens[std::size_t(t)], step);
    REQUIRE(test::relative_error<float>(one.view(), logits.view().middle_rows(t, 1)) <= 1e-5);
    for (LayerCache<float>* cache : step.caches()) REQUIRE(cache->max_size() < 2 * c.sliding_window);
  }
  // The window changes the model: full attention gives other logits from the sixth token on.
  ModelConfig full = c;
  full.sliding_window = 0;
  auto m_full = random_model<float>(full, 13, 0.2);
  auto s_full = m_full.make_state();
  const Tensor<float> lf = m_full.prefill(b.tokens, s_full, {.all_logits = true});
  REQUIRE(test::relative_error<float>(lf.view().middle_rows(0, 5), logits.view().middle_rows(0, 5)) <= 1e-5);
  REQUIRE(test::relative_error<float>(lf.view().middle_rows(6, 17), logits.view().middle_rows(6, 17)) > 1e-3);
  // And its gradients are right.
  auto md = random_model<double>(c, 15);
  check_fd(md, random_batch(c.vocab_size, 2, 11, 16), "sliding window");
}

TEST_CASE("train: gradient checkpointing gives the same gradients and bounds the tape", "[train][checkpointing]") {
  auto m = random_model<float>(small_llama(), 21, 0.2);
  const train::Batch b = random_batch(23, 2, 16, 22);
  Gradients<float> plain(m), ckpt(m);
  train::StepBuffers<float> buf_plain, buf_ckpt;
  train::lm_step<float>(m, b, &plain, buf_plain, 1.0f / float(b.count()));
  train::StepOptions o;
  o.checkpoint = [](Index) { return true; };
  train::lm_step<float>(m, b, &ckpt, buf_ckpt, 1.0f / float(b.count()), o);
  REQUIRE(max_rel_diff(plain, ckpt) == 0.0);  // the recomputation repeats the same arithmetic
  REQUIRE(buf_ckpt.tape.peak_bytes() < buf_plain.tape.peak_bytes());
}

TEST_CASE("train: a warm step allocates no new tape memory", "[train][memory]") {
  auto m = random_model<float>(small_gpt2(), 31, 0.2);
  Gradients<float> g(m);
  train::StepBuffers<float> buf;
  const train::Batch b = random_batch(19, 3, 17, 32);
  train::lm_step<float>(m, b, &g, buf, 1.0f);
  const std::size_t capacity = buf.tape.capacity_bytes();
  train::lm_step<float>(m, random_batch(19, 3, 17, 33), &g, buf, 1.0f);
  REQUIRE(buf.tape.blocks() == 1);
  REQUIRE(buf.tape.capacity_bytes() == capacity);
  REQUIRE(buf.tape.capacity_bytes() >= buf.tape.peak_bytes());
}

TEST_CASE("train: gradient accumulation over micro-batches equals one large batch", "[train][accumulation]") {
  auto m = random_model<double>(small_llama(), 41);
  const train::Batch whole = random_batch(23, 4, 9, 42);
  Gradients<double> one(m), acc(m);
  train::StepBuffers<double> buf;
  train::lm_step<double>(m, whole, &one, buf, 1.0 / double(whole.count()));
  for (Index k = 0; k < 4; ++k) {
    train::Batch part;
    part.n_seqs = 1, part.seq_len = 9;
    part.tokens.assign(whole.tokens.begin() + k * 9, whole.tokens.begin() + (k + 1) * 9);
    part.labels.assign(whole.labels.begin() + k * 9, whole.labels.begin() + (k + 1) * 9);
    train::lm_step<double>(m, part, &acc, buf, 1.0 / double(whole.count()));
  }
  REQUIRE(max_rel_diff(one, acc) <= 1e-12);
}

namespace {

// Gradients stored under HF names (grad.<name>) mapped into engram's layout: written as a checkpoint
// of the same config and loaded with the ordinary loader, so the fused q/k/v rows, Conv1D
// transposes and tied weights are placed exactly as the model's own parameters are.
hf::Model<double> golden_as_model(const std::string& dir, const std::string& prefix) {
  const auto golden = safetensors::File::open(test::fixture(dir + "/golden.safetensors").string());
  safetensors::Writer w;
  for (const auto& t : golden.tensors())
    if (t.name.rfind(prefix, 0) == 0) w.add(t.name.substr(prefix.size()), golden.read<double>(t.name), safetensors::DType::F64);
  static int counter = 0;
  const auto tmp = std::filesystem::temp_directory_path() / ("engram_golden_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::create_directories(tmp);
  std::filesystem::copy_file(test::fixture(dir + "/config.json"), tmp / "config.json", std::filesystem::copy_options::overwrite_existing);
  w.write((tmp / "model.safetensors").string());
  auto model = hf::load_model<double>(tmp);
  std::filesystem::remove_all(tmp);
  return model;
}

template <class T>
train::Batch golden_batch(const Checkpoint& golden, const std::string& prefix) {
  train::Batch b;
  const auto tok = golden.read<std::int64_t>(prefix + "tokens");
  const auto lab = golden.read<std::int64_t>(prefix + "labels");
  b.n_seqs = tok.dim(0), b.seq_len = tok.dim(1);
  for (Index r = 0; r < tok.rows(); ++r)
    for (Index c = 0; c < tok.cols(); ++c) b.tokens.push_back(std::int32_t(tok(r, c))), b.labels.push_back(std::int32_t(lab(r, c)));
  return b;
}

// max |ours - golden| / max |golden| over every parameter's gradient.
template <class T>
double gradient_error(Decoder<T>& m, Gradients<T>& g, Decoder<double>& golden_grads, std::string& worst_name) {
  std::vector<Tensor<double>*> ref;
  golden_grads.visit_parameters([&](const std::string&, Tensor<double>& t) { ref.push_back(&t); });
  std::size_t i = 0;
  double worst = 0;
  m.visit_parameters([&](const std::string& name, Tensor<T>& p) {
    Tensor<T>* ours = g.find(p);
    const Tensor<double>& r = *ref.at(i++);
    if (!ours) return;  // a tied head visited twice: compared under its first name
    double err = 0, scale = 1e-30;
    for (Index a = 0; a < r.rows(); ++a)
      for (Index c = 0; c < r.cols(); ++c) {
        scale = std::max(scale, std::abs(r.row(a)[c]));
        err = std::max(err, std::abs(double(ours->row(a)[c]) - r.row(a)[c]));
      }
    if (err / scale > worst) worst = err / scale, worst_name = name;
  });
  return worst;
}

template <class T>
void check_golden_lm(const std::string& dir, double tolerance) {
  auto m = hf::load_decoder<T>(test::fixture(dir));
  const Checkpoint golden = Checkpoint::open(test::fixture(dir + "/golden.safetensors"));
  const train::Batch b = golden_batch<T>(golden, "");
  // Logits and loss.
  train::StepBuffers<T> buf;
  TrainContext<T> ctx = buf.context(m, b.n_seqs, b.seq_len, nullptr);
  View<T> x = buf.hidden(b.rows(), m.config.d_model);
  m.embed_tokens(b.tokens, x);
  m.forward_train(x, ctx);
  buf.tape.clear();
  Tensor<T> logits({b.rows(), m.config.vocab_size});
  m.logits(x, logits.view());
  const Tensor<double> ref_logits = golden.read<double>("logits");
  double err = 0, scale = 0;
  REQUIRE(ref_logits.rows() == b.rows());
  for (Index r = 0; r < ref_logits.rows(); ++r)
    for (Index c = 0; c < ref_logits.cols(); ++c) {
      err = std::max(err, std::abs(double(logits(r, c)) - ref_logits.row(r)[c]));
      scale = std::max(scale, std::abs(ref_logits.row(r)[c]));
    }
  INFO(dir << " logits relative error " << err / scale);
  REQUIRE(err / scale <= tolerance);
  Gradients<T> g(m);
  const auto stats = train::lm_step<T>(m, b, &g, buf, T(1.0 / double(b.count())));
  const double loss = stats.loss_sum / double(stats.count), ref_loss = golden.read<double>("loss").data()[0];
  INFO(dir << " loss " << loss << " reference " << ref_loss);
  REQUIRE(std::abs(loss - ref_loss) <= tolerance * std::abs(ref_loss));
  auto ref_grads = golden_as_model(dir, "grad.");
  std::string worst_name;
  const double gerr = gradient_error(m, g, ref_grads.decoder, worst_name);
  INFO(dir << " worst gradient " << worst_name << " relative error " << gerr);
  REQUIRE(gerr <= tolerance);
}

// 10 AdamW steps (warm-up + cosine, clip by global norm 0.5, decoupled decay) against the reference.
template <class T>
void check_golden_adamw(const std::string& dir, double tolerance) {
  auto m = hf::load_decoder<T>(test::fixture(dir));
  const Checkpoint golden = Checkpoint::open(test::fixture(dir + "/golden.safetensors"));
  Gradients<T> g(m);
  train::AdamWOptions o;
  o.beta1 = 0.9, o.beta2 = 0.95, o.eps = 1e-8, o.weight_decay = 0.1, o.clip_norm = 0.5;
  train::AdamW<T> opt(g, o);
  train::Schedule sched{.peak = 1e-2, .min_lr = 1e-3, .warmup = 3, .total = 10, .decay = train::Schedule::Decay::cosine};
  const Tensor<double> ref_loss = golden.read<double>("adamw.loss"), ref_lr = golden.read<double>("adamw.lr"),
                       ref_norm = golden.read<double>("adamw.grad_norm");
  train::StepBuffers<T> buf;
  for (Index t = 1; t <= 10; ++t) {
    const train::Batch b = golden_batch<T>(golden, "step" + std::to_string(t) + ".");
    g.zero();
    const auto s = train::lm_step<T>(m, b, &g, buf, T(1.0 / double(b.count())));
    const double loss = s.loss_sum / double(s.count);
    const double lr = sched.at(t);
    INFO(dir << " step " << t << " loss " << loss << " reference " << ref_loss.data()[t - 1]);
    REQUIRE(std::abs(loss - ref_loss.data()[t - 1]) <= tolerance * std::abs(ref_loss.data()[t - 1]));
    REQUIRE(std::abs(lr - ref_lr.data()[t - 1]) <= 1e-15);
    const train::ClipStats c = opt.step(lr);
    REQUIRE(std::abs(c.norm - ref_norm.data()[t - 1]) <= tolerance * ref_norm.data()[t - 1]);
  }
  auto final_weights = golden_as_model(dir, "final.");
  std::vector<Tensor<double>*> ref;
  final_weights.decoder.visit_parameters([&](const std::string&, Tensor<double>& t) { ref.push_back(&t); });
  std::size_t i = 0;
  m.visit_parameters([&](const std::string& name, Tensor<T>& p) {
    const Tensor<double>& r = *ref.at(i++);
    double err = 0, scale = 1e-30;
    // The key bias's gradient is exactly zero (softmax is invariant to a per-row shift); in float,
    // AdamW turns its rounding noise into updates of order lr that never change the loss (a note of
    // the reference): the float comparison leaves the key slice out.
    const bool key_bias = name.ends_with("qkv.bias") && sizeof(T) == 4;
    const Index k0 = m.config.n_heads * m.config.head_dim, k1 = k0 + m.config.n_kv_heads * m.config.head_dim;
    for (Index a = 0; a < r.rows(); ++a)
      for (Index c = 0; c < r.cols(); ++c) {
        if (key_bias && c >= k0 && c < k1) continue;
        scale = std::max(scale, std::abs(r.row(a)[c]));
        err = std::max(err, std::abs(double(p.row(a)[c]) - r.row(a)[c]));
      }
    INFO(dir << " final " << name << " relative error " << err / scale);
    REQUIRE(err / scale <= tolerance);
  });
}

}  // namespace

TEST_CASE("train: Llama and GPT-2 logits, loss and every gradient match the PyTorch reference", "[train][golden]") {
  check_golden_lm<double>("train/llama", 1e-9);
  check_golden_lm<double>("train/gpt2", 1e-9);
  check_golden_lm<float>("train/llama", 1e-5);
  check_golden_lm<float>("train/gpt2", 1e-5);
}

TEST_CASE("train: 10 AdamW steps match the PyTorch reference's losses and weights", "[train][golden][adamw]") {
  check_golden_adamw<double>("train/llama", 1e-8);
  check_golden_adamw<double>("train/gpt2", 1e-8);
  check_golden_adamw<float>("train/llama", 1e-4);
  check_golden_adamw<float>("train/gpt2", 1e-4);
}

TEST_CASE("train: BERT classifier logits, loss and gradients match the PyTorch reference", "[train][golden][bert]") {
  auto model = hf::load_model<double>(test::fixture("train/bert"));
  const Checkpoint golden = Checkpoint::open(test::fixture("train/bert/golden.safetensors"));
  const auto tok = golden.read<std::int64_t>("tokens");
  const auto lab = golden.read<std::int64_t>("labels");
  const Index n = tok.dim(0), T = tok.dim(1), d = model.decoder.config.d_model;
  std::vector<std::int32_t> ids;
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c < T; ++c) ids.push_back(std::int32_t(tok(r, c)));
  Gradients<double> g(model.decoder);
  g.add_module(model.classifier, "head.");
  train::StepBuffers<double> buf;
  TrainContext<double> ctx = buf.context(model.decoder, n, T, &g);
  View<double> x = buf.hidden(n * T, d);
  model.decoder.embed_tokens(ids, x);
  model.decoder.forward_train(x, ctx);
  Tensor<double> cls({n, d}), logits({n, model.classifier.n_labels()}), dlogits({n, model.classifier.n_labels()});
  for (Index b = 0; b < n; ++b) std::copy_n(x.row(b * T), d, cls.row(b));
  model.classifier.forward_train(cls.view(), logits.view(), buf.tape);
  std::vector<std::int32_t> labels = {std::int32_t(lab[0]), std::int32_t(lab[1])};
  const auto stats = softmax_cross_entropy<double>(logits.view(), labels, 1.0 / double(n), dlogits.view());
  REQUIRE(std::abs(stats.loss_sum / double(n) - golden.read<double>("loss").data()[0]) <= 1e-10);
  Tensor<double> dcls({n, d});
  model.classifier.backward(dlogits.view(), dcls.view(), buf.tape, &g);
  View<double> dx = buf.grad_hidden(n * T, d);
  for (Index r = 0; r < n * T; ++r) std::fill_n(dx.row(r), d, 0.0);
  for (Index b = 0; b < n; ++b) std::copy_n(dcls.row(b), d, dx.row(b * T));
  model.decoder.backward(dx, ctx);
  model.decoder.embed.backward(ids, dx, &g);
  REQUIRE(buf.tape.empty());
  auto ref = golden_as_model("train/bert", "grad.");
  std::string worst_name;
  double worst = gradient_error(model.decoder, g, ref.decoder, worst_name);
  INFO("worst encoder gradient " << worst_name << ": " << worst);
  REQUIRE(worst <= 1e-9);
  for (auto [ours, theirs] : {std::pair{&model.classifier.pooler, &ref.classifier.pooler}, {&model.classifier.classifier, &ref.classifier.classifier}})
    for (auto [p, r] : {std::pair{&ours->weight, &theirs->weight}, {&ours->bias, &theirs->bias}}) {
      const Tensor<double>& gp = *g.find(*p);
      for (Index a = 0; a < gp.rows(); ++a)
        for (Index c = 0; c < gp.cols(); ++c) REQUIRE(std::abs(gp.row(a)[c] - r->row(a)[c]) <= 1e-9 * (1 + std::abs(r->row(a)[c])));
    }
}

TEST_CASE("train: a trained model saved in Hugging Face layout loads back with the same logits", "[train][io]") {
  test::TempDir tmp;
  for (const ModelConfig& c : {small_llama(), small_gpt2()}) {
    const auto m = random_model<float>(c, 51, 0.2);
    hf::save_decoder(m, tmp.path() / c.architecture);
    const auto back = hf::load_decoder<float>(tmp.path() / c.architecture);
    const std::vector<std::int32_t> toks = {1, 5, 2, 7, 3};
    auto s1 = m.make_state();
    auto s2 = back.make_state();
    REQUIRE(test::relative_error<float>(back.prefill(toks, s2, {.all_logits = true}).view(), m.prefill(toks, s1, {.all_logits = true}).view()) == 0.0);
  }
}

namespace {

train::TrainerOptions tiny_options(const std::filesystem::path& out, Index steps) {
  train::TrainerOptions o;
  o.steps = steps;
  o.batch = 4;
  o.micro_batch = 2;
  o.schedule = {.peak = 3e-3, .min_lr = 3e-4, .warmup = 2, .total = steps};
  o.log_every = 1;
  o.eval_every = 3;
  o.eval_batches = 1;
  o.checkpoint_every = 3;
  o.out_dir = out;
  return o;
}

}  // namespace

TEST_CASE("train: resuming from a checkpoint continues bit-identically, and runs are deterministic", "[train][resume]") {
  const auto corpus = train::TextCorpus::from_text(std::string(4000, 'a') + "the quick brown fox jumps over the lazy dog. " + std::string(3000, 'b'),
                                                   "test text", 0.3);
  const train::WindowSource source(corpus, 24, 99);
  ModelConfig c = small_llama();
  c.vocab_size = 261;
  test::TempDir a, b;
  std::vector<double> straight, resumed;
  {
    auto m = random_model<float>(c, 61, 0.1);
    train::Trainer<float> t(m, source, tiny_options(a.path(), 6));
    t.run([&](const train::Progress& p) { straight.push_back(p.loss); });
  }
  {
    auto m = random_model<float>(c, 61, 0.1);
    train::Trainer<float> t(m, source, tiny_options(b.path(), 6));
    t.run([&](const train::Progress& p) { resumed.push_back(p.loss); }, /*until=*/3);  // interrupted after the step-3 checkpoint
  }
  {
    auto m = random_model<float>(c, 999, 0.1);  // different weights: the checkpoint must overwrite them
    auto o = tiny_options(b.path(), 6);
    o.resume = true;
    train::Trainer<float> t(m, source, o);
    t.run([&](const train::Progress& p) { resumed.push_back(p.loss); });
    REQUIRE(t.history().size() == 6);  // train.csv rows of the first run are kept
  }
  REQUIRE(straight.size() == 6);
  REQUIRE(resumed == straight);
  std::vector<double> again;
  {
    test::TempDir d;
    auto m = random_model<float>(c, 61, 0.1);
    train::Trainer<float> t(m, source, tiny_options(d.path(), 6));
    t.run([&](const train::Progress& p) { again.push_back(p.loss); });
  }
  REQUIRE(again == straight);
  REQUIRE(std::filesystem::exists(a.path() / "train.csv"));
  REQUIRE(std::filesystem::exists(a.path() / "train.svg"));
  // The checkpoint is an ordinary Hugging Face directory.
  REQUIRE(hf::load_decoder<float>(a.path() / "checkpoint").n_params() == random_model<float>(c, 1).n_params());
}

TEST_CASE("train: bad input is a clear Error", "[train][errors]") {
  SECTION("a corpus shorter than the context") {
    const auto corpus = train::TextCorpus::from_text("short text", "tiny", 0.0);
    REQUIRE_THROWS_WITH(train::WindowSource(corpus, 64, 1), Catch::Contains("shorter than one window"));
  }
  SECTION("labels and tokens out of range") {
    auto m = random_model<float>(small_llama(), 71);
    train::Batch b = random_batch(23, 1, 5, 72);
    b.labels[2] = 23;
    Gradients<float> g(m);
    train::StepBuffers<float> buf;
    REQUIRE_THROWS_WITH(train::lm_step<float>(m, b, &g, buf, 1.0f), Catch::Contains("label 23 at row 2"));
    b.labels[2] = 1;
    b.tokens[4] = -1;
    REQUIRE_THROWS_WITH(train::lm_step<float>(m, b, &g, buf, 1.0f), Catch::Contains("token -1 at row 4"));
  }
  SECTION("a NaN loss stops training, names the step and keeps the last good checkpoint") {
    const auto corpus = train::TextCorpus::from_text(std::string(5000, 'x') + std::string(2000, 'y'), "nan text", 0.2);
    const train::WindowSource source(corpus, 16, 5);
    ModelConfig c = small_gpt2();
    c.vocab_size = 261;
    auto m = random_model<float>(c, 81, 0.1);
    test::TempDir out;
    auto o = tiny_options(out.path(), 3);
    train::Trainer<float> t(m, source, o);
    t.run();
    REQUIRE(std::filesystem::exists(out.path() / "checkpoint" / "model.safetensors"));
    m.blocks[1].branches[1].norm.weight[0] = std::numeric_limits<float>::quiet_NaN();
    auto o2 = tiny_options(out.path(), 6);
    train::Trainer<float> t2(m, source, o2);
    for (int i = 0; i < 3; ++i) t2.optimizer().step(0.0);  // continue at step 4
    REQUIRE_THROWS_WITH(t2.step(), Catch::Contains("step 4: the loss is") && Catch::Contains("before updating the weights"));
    REQUIRE(std::filesystem::exists(out.path() / "checkpoint" / "model.safetensors"));
  }
  SECTION("an optimizer state that does not match the model") {
    test::TempDir out;
    auto small = random_model<float>(small_llama(), 91);
    Gradients<float> g(small);
    train::AdamW<float> opt(g, {});
    opt.save(out.path() / "opt.safetensors");
    ModelConfig other = small_llama();
    other.d_ff = 32;
    auto big = random_model<float>(other, 92);
    Gradients<float> g2(big);
    train::AdamW<float> opt2(g2, {});
    REQUIRE_THROWS_WITH(opt2.load(out.path() / "opt.safetensors"), Catch::Contains("does not match the model") && Catch::Contains("wrong shape"));
  }
  SECTION("schedules and optimizer options out of range") {
    REQUIRE_THROWS_WITH((train::Schedule{.peak = 0}).validate(), Catch::Contains("peak learning rate"));
    REQUIRE_THROWS_WITH((train::Schedule{.peak = 1e-3, .warmup = 10, .total = 5}).validate(), Catch::Contains("total steps"));
    train::AdamWOptions bad;
    bad.beta2 = 1.0;
    REQUIRE_THROWS_WITH(bad.validate(), Catch::Contains("beta2"));
  }
}
