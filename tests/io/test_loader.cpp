// Loading HF checkpoints: golden logits of the PyTorch references (Llama F32, Llama BF16 sharded
// with tied head and linear RoPE scaling, GPT-2), RoPE reference cases, and one Error that names
// every missing, unexpected or mis-shaped tensor.
#include "engram/io/hf.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {
template <class T>
void check_golden_logits(const std::string& dir, double tolerance) {
  const auto model = hf::load_decoder<T>(test::fixture(dir));
  const Checkpoint golden = Checkpoint::open(test::fixture(dir + "/golden.safetensors"));
  const auto tokens = test::read_tokens(golden);
  auto state = model.make_state();
  const auto logits = model.prefill(tokens, state, {.chunk = 0, .all_logits = true});
  const auto ref = golden.read<float>("logits");
  const double err = test::relative_error<T>(logits.view(), ref.view());
  INFO(dir << ": relative error " << err);
  CHECK(err <= tolerance);
}
}  // namespace

TEST_CASE("Llama and GPT-2 and the BF16 sharded Llama variant match the PyTorch reference", "[loader][golden]") {
  check_golden_logits<float>("llama_tiny", 1e-4);
  check_golden_logits<float>("llama_tiny_variant", 1e-4);
  check_golden_logits<float>("gpt2_tiny", 1e-4);
  check_golden_logits<double>("llama_tiny", 1e-6);  // goldens are float-rounded: 1e-7 relative
  check_golden_logits<double>("gpt2_tiny", 1e-6);
}

TEST_CASE("configs are read with HF semantics", "[loader]") {
  const auto llama = hf::config_from_json(read_json_file(test::fixture("llama_tiny/config.json")));
  CHECK(llama.n_kv_heads == 2);
  CHECK(llama.head_dim == 8);
  CHECK(llama.mlp == MlpKind::gated);
  const auto variant = hf::config_from_json(read_json_file(test::fixture("llama_tiny_variant/config.json")));
  CHECK(variant.rope_scaling.kind == RopeScaling::Kind::linear);
  CHECK(variant.tie_embeddings);
  const auto gpt2 = hf::config_from_json(read_json_file(test::fixture("gpt2_tiny/config.json")));
  CHECK(gpt2.d_ff == 128);
  CHECK(gpt2.positions == PositionKind::learned);
  CHECK_THROWS_AS(hf::config_from_json(json::parse(R"({"model_type":"mamba"})")), Error);
  CHECK_THROWS_AS(hf::config_from_json(json::parse(R"({"model_type":"llama","hidden_size":32})")), Error);
  CHECK_THROWS_AS(hf::config_from_json(json::parse(
                      R"({"model_type":"llama","hidden_size":32,"vocab_size":5,"num_hidden_layers":1,"num_attention_heads":4,
                          "num_key_value_heads":3,"intermediate_size":8})")),
                  Error);  // 3 KV heads do not divide 4 heads
  CHECK_THROWS_AS(hf::config_from_json(json::parse(
                      R"({"model_type":"llama","hidden_size":32,"vocab_size":5,"num_hidden_layers":1,"num_attention_heads":4,
                          "intermediate_size":8,"rope_scaling":{"type":"dynamic","factor":2}})")),
                  Error);
}

TEST_CASE("RoPE frequencies and rotations match the reference cases", "[loader][rope]") {
  const Checkpoint c = Checkpoint::open(test::fixture("rope_cases.safetensors"));
  const auto x = c.read<double>("x");
  std::vector<std::int64_t> pos;
  const auto p = c.read<std::int64_t>("positions");
  for (Index i = 0; i < p.numel(); ++i) pos.push_back(p.data()[i]);
  const std::pair<const char*, RopeScaling> cases[] = {
      {"default", {}},
      {"linear", {RopeScaling::Kind::linear, 4.0}},
      {"ntk", {RopeScaling::Kind::ntk, 4.0, 2.0}},
      {"llama3", {RopeScaling::Kind::llama3, 8.0, 1.0, 1.0, 4.0, 8192.0}}};
  for (const auto& [name, scaling] : cases) {
    const double theta = std::string(name) == "llama3" ? 500000.0 : 10000.0;
    const auto inv = rope_inv_freq(16, theta, scaling);
    const auto ref = c.read<double>(std::string("inv_freq.") + name);
    for (Index i = 0; i < 8; ++i) CHECK(inv[std::size_t(i)] == Approx(ref[i]).epsilon(1e-6));
  }
  for (const char* pairing : {"rotate_half.default", "interleaved.default", "rotate_half.llama3"}) {
    const bool llama3 = std::string(pairing).find("llama3") != std::string::npos;
    const auto inv = llama3 ? rope_inv_freq(16, 500000.0, {RopeScaling::Kind::llama3, 8.0, 1.0, 1.0, 4.0, 8192.0})
                            : rope_inv_freq(16, 10000.0);
    auto y = x.copy();
    apply_rope<double>(y.view(), 1, 16, make_rope_table<double>(inv, pos),
                       std::string(pairing).rfind("interleaved", 0) == 0 ? RopePairing::interleaved : RopePairing::rotate_half);
    const auto ref = c.read<float>(pairing);
    INFO(pairing);
    CHECK(test::relative_error<double>(y.view(), ref.view()) < 1e-6);
  }
}

TEST_CASE("a checkpoint that does not match its config fails with every problem named", "[loader][errors]") {
  test::TempDir dir;
  const std::string config = R"({"model_type":"llama","vocab_size":11,"hidden_size":8,"intermediate_size":12,
    "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"tie_word_embeddings":true})";
  std::ofstream(dir.path() / "config.json") << config;
  safetensors::Writer w;
  w.add("model.embed_tokens.weight", Tensor<float>({11, 8}));
  w.add("model.layers.0.input_layernorm.weight", Tensor<float>({8}));
  w.add("model.layers.0.self_attn.q_proj.weight", Tensor<float>({8, 8}));
  w.add("model.layers.0.self_attn.k_proj.weight", Tensor<float>({4, 8}));
  w.add("model.layers.0.self_attn.v_proj.weight", Tensor<float>({8, 8}));  // mis-shaped: 1 KV head of 4
  w.add("model.layers.0.self_attn.o_proj.weight", Tensor<float>({8, 8}));
  w.add("model.layers.0.post_attention_layernorm.weight", Tensor<float>({8}));
  w.add("model.layers.0.mlp.gate_proj.weight", Tensor<float>({12, 8}));
  w.add("model.layers.0.mlp.up_proj.weight", Tensor<float>({12, 8}));
  // missing: down_proj and model.norm
  w.add("model.layers.0.mlp.extra.weight", Tensor<float>({3}));  // unexpected
  w.write((dir.path() / "model.safetensors").string());
  try {
    (void)hf::load_decoder<float>(dir.path());
    FAIL("loaded a broken checkpoint");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("4 problem(s)") != std::string::npos);
    CHECK(msg.find("tensor model.layers.0.self_attn.v_proj.weight has shape [8, 8], expected [4, 8]") != std::string::npos);
    CHECK(msg.find("missing tensor model.layers.0.mlp.down_proj.weight [8, 12]") != std::string::npos);
    CHECK(msg.find("missing tensor model.norm.weight [8]") != std::string::npos);
    CHECK(msg.find("unexpected tensor model.layers.0.mlp.extra.weight [3]") != std::string::npos);
  }
  CHECK_THROWS_AS(hf::load_decoder<float>(dir.path() / "nowhere"), Error);
}

TEST_CASE("sharded checkpoints validate their index", "[loader][errors]") {
  test::TempDir dir;
  safetensors::Writer a, b;
  a.add("x", Tensor<float>({2}));
  b.add("y", Tensor<float>({2}));
  a.write((dir.path() / "s1.safetensors").string());
  b.write((dir.path() / "s2.safetensors").string());
  std::ofstream(dir.path() / "model.safetensors.index.json") << R"({"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}})";
  const Checkpoint ok = Checkpoint::open(dir.path());
  CHECK(ok.names() == std::vector<std::string>{"x", "y"});
  std::ofstream(dir.path() / "model.safetensors.index.json") << R"({"weight_map":{"x":"s1.safetensors","y":"s1.safetensors"}})";
  CHECK_THROWS_AS(Checkpoint::open(dir.path()), Error);
  std::ofstream(dir.path() / "model.safetensors.index.json") << R"({"weight_map":{"x":"../s1.safetensors"}})";
  CHECK_THROWS_AS(Checkpoint::open(dir.path()), Error);
}
