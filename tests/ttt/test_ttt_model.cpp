// TTT language models: loading ttt-lm-pytorch configs and checkpoints, golden logits of the PyTorch
// reference (prefill and decode), the Decoder invariants with TTT mixers, FLOP accounting, and the
// loader's errors.
#include "engram/ttt/init.hpp"
#include "engram/ttt/loader.hpp"
#include "engram/ttt/save.hpp"
#include "engram/train/optimizer.hpp"
#include "engram/train/step.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

const char* const kModels[] = {"model_linear_T", "model_mlp_M"};

template <class T>
Tensor<T> prefill_then_decode(const Decoder<T>& m, const std::vector<std::int32_t>& tokens, Index prefill,
                              typename Decoder<T>::State& s) {
  Tensor<T> out({Index(tokens.size()), m.config.vocab_size});
  const auto first = m.prefill(std::span(tokens).first(std::size_t(prefill)), s, {.chunk = 0, .all_logits = true});
  for (Index i = 0; i < prefill; ++i) std::copy_n(first.row(i), first.cols(), out.row(i));
  for (std::size_t i = std::size_t(prefill); i < tokens.size(); ++i) {
    const auto l = m.decode(tokens[i], s);
    std::copy_n(l.row(0), l.cols(), out.row(Index(i)));
  }
  return out;
}

template <class T>
ttt::State<T>& ttt_state(typename Decoder<T>::State& s, Index block) {
  const Index branch = s.layer_state(block, 0) && dynamic_cast<ttt::State<T>*>(s.layer_state(block, 0)) ? 0 : 1;
  return dynamic_cast<ttt::State<T>&>(*s.layer_state(block, branch));
}

template <class T>
double state_difference(ttt::State<T>& a, ttt::State<T>& b) {
  double e = 0;
  auto cmp = [&](const Tensor<T>& x, const Tensor<T>& y) {
    if (x.empty()) return;
    test::Mat ref = test::to_mat<T>(y.view());
    e = std::max(e, test::max_abs_diff<T>(x.view(), ref) / std::max(test::max_abs(ref), 1e-30));
  };
  cmp(a.W1, b.W1), cmp(a.b1, b.b1), cmp(a.W2, b.W2), cmp(a.b2, b.b2);
  cmp(a.W1_grad, b.W1_grad), cmp(a.b1_grad, b.b1_grad), cmp(a.W2_grad, b.W2_grad), cmp(a.b2_grad, b.b2_grad);
  cmp(a.conv_qk, b.conv_qk);
  return a.position == b.position ? e : INFINITY;
}

template <class T>
double relative(const Tensor<T>& got, const Tensor<T>& ref) {
  return test::max_abs_diff<T>(got.view(), test::to_mat<T>(ref.view())) / std::max(test::max_abs(test::to_mat<T>(ref.view())), 1e-30);
}

template <class T>
void check_golden(const char* dir, double tolerance) {
  const auto m = ttt::load_decoder<T>(test::fixture(std::string("ttt/") + dir));
  const Checkpoint golden = Checkpoint::open(test::fixture(std::string("ttt/") + dir + "/golden.safetensors"));
  const auto tokens = test::read_tokens(golden);
  auto s = m.make_state();
  const auto logits = m.prefill(tokens, s, {.chunk = 0, .all_logits = true});
  const double e = test::relative_error<T>(logits.view(), golden.read<float>("logits").view());
  auto s2 = m.make_state();
  const auto dec = prefill_then_decode(m, tokens, 21, s2);
  const double e_dec = test::relative_error<T>(dec.view(), golden.read<float>("logits_decode").view());
  INFO(dir << (sizeof(T) == 4 ? " float" : " double") << " logits relative error " << e << ", prefill 21 + decode 16: " << e_dec);
  CHECK(e <= tolerance);
  CHECK(e_dec <= tolerance);
}

}  // namespace

TEST_CASE("TTT models load from ttt-lm-pytorch checkpoints and match the reference logits", "[ttt][golden][loader]") {
  for (const char* dir : kModels) {
    check_golden<float>(dir, 1e-5);
    check_golden<double>(dir, 1e-6);  // goldens are float-rounded
  }
  const auto m = ttt::load_decoder<float>(test::fixture("ttt/model_mlp_M"));
  CHECK(m.config.positions == PositionKind::none);
  CHECK(m.blocks.size() == 2);
  CHECK(m.blocks[0].branches.size() == 3);
  CHECK(m.blocks[0].branches[0].layer->kind() == "causal_conv");
  CHECK(m.blocks[0].branches[1].layer->kind() == "ttt_mlp");
  CHECK(m.lm_head.weight.empty());  // tied
}

TEST_CASE("TTT decoder: prefill equals decode and chunked prefill with equal states", "[ttt][invariant]") {
  for (const char* dir : kModels) {
    INFO(dir);
    const auto m = ttt::load_decoder<double>(test::fixture(std::string("ttt/") + dir));
    std::vector<std::int32_t> tokens;
    for (int i = 0; i < 75; ++i) tokens.push_back(std::int32_t((i * 17 + 3) % 53));
    auto full = m.make_state();
    const auto ref = m.prefill(tokens, full, {.chunk = 0, .all_logits = true});
    for (Index chunk : {1, 5, 16, 17}) {
      INFO("chunk " << chunk);
      auto s = m.make_state();
      const auto got = m.prefill(tokens, s, {.chunk = chunk, .all_logits = true});
      CHECK(relative(got, ref) <= 1e-12);
      CHECK(s.position() == 75);
      for (Index b = 0; b < 2; ++b) CHECK(state_difference(ttt_state<double>(s, b), ttt_state<double>(full, b)) <= 1e-12);
    }
    // The state's size does not grow with the sequence (an RNN, unlike a KV cache).
    auto shorter = m.make_state();
    m.prefill(std::span(tokens).first(3), shorter);
    CHECK(shorter.bytes() == full.bytes());
  }
}

TEST_CASE("TTT decoder state copies fork a sequence", "[ttt][invariant]") {
  const auto m = ttt::load_decoder<float>(test::fixture("ttt/model_mlp_M"));
  const std::vector<std::int32_t> prefix = {1, 5, 9, 13, 17, 2, 4, 8, 16, 32, 11, 12, 13, 14, 15, 16, 17, 18, 19},
                                  a = {2, 3, 7}, b = {40, 41, 42};
  auto s = m.make_state();
  m.prefill(prefix, s);
  auto fork = s.copy();
  const auto la = m.prefill(a, s);
  const auto lb = m.prefill(b, fork);
  auto direct = m.make_state();
  std::vector<std::int32_t> pb = prefix;
  pb.insert(pb.end(), b.begin(), b.end());
  const auto ref_b = m.prefill(pb, direct);
  CHECK(relative(lb, ref_b) <= 1e-6);
  CHECK(relative(la, ref_b) > 1e-3);
  s.reset();
  CHECK(s.position() == 0);
  CHECK(ttt_state<float>(s, 0).position == 0);
}

TEST_CASE("TTT layers report analytic FLOPs by category", "[ttt]") {
  auto spec = ttt::config_from_json(read_json_file(test::fixture("ttt/model_linear_T/config.json")));
  const auto m = ttt::load_decoder<float>(test::fixture("ttt/model_linear_T"));
  const Index C = 32, H = 4, d = 8, L = 2;
  auto s = m.make_state();
  m.prefill(std::vector<std::int32_t>(37, 3), s);  // 2 dual mini-batches + 5 primal tokens per layer
  const double inner = double(L * H) * (2 * ttt::inner_flops(ttt::Kind::linear, ttt::InnerForm::dual, 16, d, d) +
                                        ttt::inner_flops(ttt::Kind::linear, ttt::InnerForm::primal, 5, d, d));
  CHECK(s.flops[FlopCategory::ttt_inner] == Approx(inner));
  CHECK(ttt::inner_flops(ttt::Kind::linear, ttt::InnerForm::dual, 16, 64, 64) / 16 == Approx(6 * 64 * 64 + 4 * 16 * 64));
  CHECK(ttt::inner_flops(ttt::Kind::mlp, ttt::InnerForm::dual, 16, 64, 256) / 16 == Approx(56 * 64 * 64 + 20 * 16 * 64));
  // q, k, v, lr gate and o_proj per token and layer.
  CHECK(s.flops[FlopCategory::projections] == Approx(double(L) * 37 * 2.0 * C * (3 * C + H + C)));
  CHECK(spec.layer.kind == ttt::Kind::linear);
}

TEST_CASE("TTT configs: TTTConfig keys and defaults and clear errors", "[ttt][loader][errors]") {
  const auto mlp = ttt::config_from_json(read_json_file(test::fixture("ttt/model_mlp_M/config.json")));
  CHECK(mlp.layer.kind == ttt::Kind::mlp);
  CHECK(mlp.layer.share_qk);
  CHECK(mlp.layer.use_gate);
  CHECK(mlp.layer.pre_conv);
  CHECK(mlp.layer.base_lr == 0.1);
  CHECK(mlp.layer.inner_dim() == 32);
  CHECK(mlp.d_ff == 64);
  // The shape keys are required (no silent 1.3B default); the behaviour keys take TTTConfig's defaults.
  const std::string shape = R"("hidden_size":32,"num_attention_heads":4,"num_hidden_layers":2,"intermediate_size":64,"vocab_size":53)";
  const auto defaults = ttt::config_from_json(json::parse("{" + shape + "}"));
  CHECK(defaults.layer.d_model == 32);
  CHECK(defaults.layer.mini_batch == 16);
  CHECK(defaults.layer.kind == ttt::Kind::linear);
  CHECK(defaults.layer.base_lr == 1.0);
  CHECK(defaults.tie_embeddings);
  auto error_of = [&](const std::string& keys) {  // `keys` override those of the valid shape
    try {
      json::Value cfg = json::parse("{" + shape + "}");
      const json::Value over = json::parse("{" + keys + "}");
      for (const auto& [k, v] : over.as_object()) cfg.set(k, v);
      (void)ttt::config_from_json(cfg);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("").find("no error") != std::string::npos);
  for (const char* key : {"hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"}) {
    std::string without = shape;
    const auto at = without.find(std::string("\"") + key + "\"");
    without.erase(at, without.find(',', at) == std::string::npos ? std::string::npos : without.find(',', at) - at + 1);
    if (!without.empty() && without.back() == ',') without.pop_back();
    std::string msg;
    try {
      (void)ttt::config_from_json(json::parse("{" + without + "}"));
    } catch (const Error& e) {
      msg = e.what();
    }
    INFO(key << ": " << msg);
    CHECK(msg.find(std::string("missing required key \"") + key) != std::string::npos);
  }
  CHECK(error_of(R"("model_type":"llama")").find("not a TTT model") != std::string::npos);
  CHECK(error_of(R"("ttt_layer_type":"conv")").find("ttt_layer_type") != std::string::npos);
  CHECK(error_of(R"("mini_batch_size":0)").find("mini_batch_size") != std::string::npos);
  CHECK(error_of(R"("hidden_size":12,"num_attention_heads":4)").find("head_dim") != std::string::npos);  // d = 3
  CHECK(error_of(R"("hidden_size":30,"num_attention_heads":4)").find("must divide \"hidden_size\"") != std::string::npos);
  CHECK(error_of(R"("hidden_act":"gelu")").find("hidden_act") != std::string::npos);
  CHECK(error_of(R"("ttt_base_lr":-1)").find("ttt_base_lr") != std::string::npos);
  CHECK(error_of(R"("pre_conv":true,"conv_kernel":0)").find("conv_kernel") != std::string::npos);
  CHECK(error_of(R"("vocab_size":0)").find("vocab_size") != std::string::npos);
  CHECK(error_of(R"("mini_batch_size":"16")").find("mini_batch_size") != std::string::npos);
  std::string not_object;
  try {
    (void)ttt::config_from_json(json::parse("[1]"));
  } catch (const Error& e) {
    not_object = e.what();
  }
  CHECK(not_object.find("expected a JSON object") != std::string::npos);
}

TEST_CASE("a TTT checkpoint that does not match its config fails with every problem named", "[ttt][loader][errors]") {
  const Checkpoint ok = Checkpoint::open(test::fixture("ttt/model_mlp_M/model.safetensors"));
  test::TempDir dir;
  std::filesystem::copy_file(test::fixture("ttt/model_mlp_M/config.json"), dir.path() / "config.json");
  safetensors::Writer w;
  for (const auto& name : ok.names()) {
    if (name == "model.layers.1.seq_modeling_block.W2" || name == "model.norm.weight") continue;  // missing
    if (name == "model.layers.0.seq_modeling_block.conv_q.weight") {
      w.add(name, Tensor<float>({32, 4}));  // mis-shaped: [C, K] instead of [C, 1, K]
      continue;
    }
    w.add(name, ok.read<float>(name), safetensors::DType::F32, ok.shape(name));
  }
  w.add("model.layers.0.seq_modeling_block.extra", Tensor<float>({3}));  // unexpected
  w.add("model.layers.0.seq_modeling_block.rotary_emb.inv_freq", Tensor<float>({4}));  // a buffer: ignored
  w.add("lm_head.weight", Tensor<float>({53, 32}));  // the tied head's stored copy: ignored
  w.write((dir.path() / "model.safetensors").string());
  try {
    (void)ttt::load_decoder<float>(dir.path());
    FAIL("loaded a broken checkpoint");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("4 problem(s)") != std::string::npos);
    CHECK(msg.find("missing tensor model.layers.1.seq_modeling_block.W2 [4, 32, 8]") != std::string::npos);
    CHECK(msg.find("missing tensor model.norm.weight [32]") != std::string::npos);
    CHECK(msg.find("tensor model.layers.0.seq_modeling_block.conv_q.weight has shape [32, 4], expected [32, 1, 4]") != std::string::npos);
    CHECK(msg.find("unexpected tensor model.layers.0.seq_modeling_block.extra [3]") != std::string::npos);
  }
  CHECK_THROWS_AS(ttt::load_decoder<float>(dir.path() / "nowhere"), Error);
}

TEST_CASE("an untied TTT checkpoint reads lm_head.weight", "[ttt][loader]") {
  const auto dir_ref = test::fixture("ttt/model_linear_T");
  const Checkpoint ok = Checkpoint::open(dir_ref / "model.safetensors");
  test::TempDir dir;
  std::string config = read_text_file(dir_ref / "config.json");
  const std::string tied = "\"tie_word_embeddings\": true";
  REQUIRE(config.find(tied) != std::string::npos);
  config.replace(config.find(tied), tied.size(), "\"tie_word_embeddings\": false");
  std::ofstream(dir.path() / "config.json") << config;
  safetensors::Writer w;
  for (const auto& name : ok.names()) w.add(name, ok.read<float>(name), safetensors::DType::F32, ok.shape(name));
  w.add("lm_head.weight", ok.read<float>("model.embed_tokens.weight"));  // the same matrix, stored untied
  w.write((dir.path() / "model.safetensors").string());
  const auto m = ttt::load_decoder<float>(dir.path());
  CHECK_FALSE(m.lm_head.weight.empty());
  const Checkpoint golden = Checkpoint::open(dir_ref / "golden.safetensors");
  auto s = m.make_state();
  const auto logits = m.prefill(test::read_tokens(golden), s, {.chunk = 0, .all_logits = true});
  CHECK(test::relative_error<float>(logits.view(), golden.read<float>("logits").view()) <= 1e-5);
}

TEST_CASE("TTT models initialised for training save in ttt-lm-pytorch's names and load back exactly", "[ttt][loader][save]") {
  // Both inner models on both backbones, untied and tied heads: the saver and the loader share one
  // name table (ttt::bind_model), so every tensor must come back bit for bit and give the same logits.
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 37; ++i) tokens.push_back(std::int32_t((i * 29 + 5) % 61));
  for (const ttt::Kind kind : {ttt::Kind::linear, ttt::Kind::mlp})
    for (const bool mamba : {false, true}) {
      ttt::ModelSpec spec;
      spec.layer = mamba ? ttt::Config::mamba(kind, 32, 2) : ttt::Config::transformer(kind, 32, 2);
      spec.vocab_size = 61, spec.n_layers = 2, spec.d_ff = 48, spec.tie_embeddings = !mamba;
      spec.validate();
      INFO((kind == ttt::Kind::linear ? "linear" : "mlp") << (mamba ? " mamba" : " transformer"));
      auto m = ttt::make_decoder<float>(spec);
      ttt::init_for_training(m, 7, 0.05);
      test::TempDir dir;
      ttt::save_decoder<float>(m, dir.path());
      auto back = ttt::load_decoder<float>(dir.path());
      std::vector<std::pair<std::string, const Tensor<float>*>> want, got;
      m.visit_parameters([&](const std::string& name, Tensor<float>& t) { want.emplace_back(name, &t); });
      back.visit_parameters([&](const std::string& name, Tensor<float>& t) { got.emplace_back(name, &t); });
      REQUIRE(got.size() == want.size());
      for (std::size_t i = 0; i < want.size(); ++i) {
        INFO(want[i].first);
        CHECK(got[i].first == want[i].first);
        REQUIRE(got[i].second->numel() == want[i].second->numel());
        CHECK(test::relative_error<float>(got[i].second->view(), want[i].second->view()) == 0.0);
      }
      auto s0 = m.make_state(), s1 = back.make_state();
      const auto a = m.prefill(tokens, s0, {.chunk = 0, .all_logits = true});
      const auto b = back.prefill(tokens, s1, {.chunk = 0, .all_logits = true});
      CHECK(test::relative_error<float>(b.view(), a.view()) == 0.0);
    }
}

TEST_CASE("a TTT model trained by AdamW keeps prefill == decode and dual == primal on its trained weights", "[ttt][invariant][train]") {
  // 30 AdamW steps on a repeating pattern move every outer parameter (W0, the learning-rate gate,
  // the token scale, the norms) well away from their initial values; the inference invariants must
  // hold on what training produced, not only on random or loaded weights.
  for (const ttt::Kind kind : {ttt::Kind::linear, ttt::Kind::mlp}) {
    INFO((kind == ttt::Kind::linear ? "linear" : "mlp"));
    ttt::ModelSpec spec;
    spec.layer = ttt::Config::transformer(kind, 16, 2);
    spec.vocab_size = 13, spec.n_layers = 1, spec.d_ff = 24;
    spec.validate();
    auto m = ttt::make_decoder<double>(spec);
    ttt::init_for_training(m, 11, 0.1);
    Gradients<double> g(m);
    train::AdamWOptions o;
    o.weight_decay = 0.0, o.clip_norm = 1.0;
    train::AdamW<double> opt(g, o);
    train::StepBuffers<double> buf;
    train::Batch b;
    b.n_seqs = 2, b.seq_len = 40;  // two whole mini-batches and a partial one
    for (Index i = 0; i < b.rows() + 1; ++i) b.tokens.push_back(std::int32_t((i * 5 + i / 7) % 13));
    b.labels.assign(b.tokens.begin() + 1, b.tokens.end());
    b.tokens.pop_back();
    double first = 0, last = 0;
    for (int step = 0; step < 30; ++step) {
      g.zero();
      const auto s = train::lm_step<double>(m, b, &g, buf, 1.0 / double(b.count()));
      (step == 0 ? first : last) = s.loss_sum / double(s.count);
      opt.step(1e-2);
    }
    CHECK(last < 0.7 * first);  // it trained
    std::vector<std::int32_t> tokens(b.tokens.begin(), b.tokens.begin() + 45);
    auto full = m.make_state();
    const auto ref = m.prefill(tokens, full, {.chunk = 0, .all_logits = true});
    auto s = m.make_state();
    const auto got = prefill_then_decode(m, tokens, 3, s);
    CHECK(relative(got, ref) <= 1e-12);
    CHECK(state_difference(ttt_state<double>(s, 0), ttt_state<double>(full, 0)) <= 1e-12);
  }
}
