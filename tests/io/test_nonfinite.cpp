// The NaN/Inf policy across every model family: a NaN planted in a checkpoint weight, a weight set
// through the API, an input embedding, an RMT memory or a TTT inner state is an engram::Error that
// names where (tensor, block, position, memory row), under every cache policy; never a silent zero
// or a plausible token.
#include <limits>

#include "engram/engram.hpp"
#include "test_util.hpp"

using namespace engram;
namespace fs = std::filesystem;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using test::error_of;  // the Error an input must raise (test_util.hpp)

// A copy of fixture directory `name` whose tensor `tensor` holds `value` at element `at`.
void plant_in_checkpoint(const fs::path& fixture, const std::string& tensor, Index at, float value, const fs::path& out) {
  fs::copy_file(fixture / "config.json", out / "config.json");
  const auto file = safetensors::File::open((fixture / "model.safetensors").string());
  safetensors::Writer w;
  bool found = false;
  for (const auto& t : file.tensors()) {
    Tensor<float> x = file.read<float>(t.name);
    if (t.name == tensor) {
      REQUIRE(at < x.numel());
      x.row(at / x.cols())[at % x.cols()] = value;
      found = true;
    }
    w.add(t.name, x, safetensors::DType::F32, t.shape);
  }
  REQUIRE(found);
  w.write((out / "model.safetensors").string());
}

std::vector<std::int32_t> tokens(Index n, Index vocab) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) t[std::size_t(i)] = std::int32_t((3 * i + 1) % vocab);
  return t;
}

}  // namespace

TEST_CASE("a non-finite checkpoint weight is an Error naming the tensor, in every family", "[nan][load]") {
  struct Planted {
    const char* fixture;
    const char* tensor;
    float value;
    std::function<void(const fs::path&)> load;
  };
  const Planted cases[] = {
      {"llama_tiny", "model.layers.1.mlp.down_proj.weight", kNaN, [](const fs::path& d) { (void)hf::load_model<float>(d); }},
      {"gpt2_tiny", "h.0.attn.c_attn.weight", std::numeric_limits<float>::infinity(), [](const fs::path& d) { (void)hf::load_model<float>(d); }},
      {"rmt/encoder", "bert.encoder.layer.1.output.dense.bias", -std::numeric_limits<float>::infinity(),
       [](const fs::path& d) { (void)rmt::load<float>(d); }},
      {"rmt/decoder", "memory", kNaN, [](const fs::path& d) { (void)rmt::load<float>(d); }},
      {"ttt/model_linear_T", "model.layers.0.seq_modeling_block.W1", kNaN, [](const fs::path& d) { (void)ttt::load_decoder<float>(d); }},
      {"ttt/model_mlp_M", "model.layers.1.seq_modeling_block.learnable_token_idx", kNaN,
       [](const fs::path& d) { (void)ttt::load_decoder<float>(d); }},
  };
  for (const Planted& p : cases) {
    INFO(p.fixture << " " << p.tensor);
    test::TempDir dir;
    const auto names = safetensors::File::open((test::fixture(p.fixture) / "model.safetensors").string()).tensors();
    std::string tensor = p.tensor;
    for (const auto& t : names)  // BERT fixtures may be stored with or without the "bert." prefix
      if (t.name == tensor || "bert." + t.name == tensor) tensor = t.name;
    plant_in_checkpoint(test::fixture(p.fixture), tensor, 1, p.value, dir.path());
    const std::string msg = error_of([&] { p.load(dir.path()); });
    INFO(msg);
    CHECK(msg.find(tensor) != std::string::npos);
    CHECK(msg.find("non-finite") != std::string::npos);
  }
}

TEST_CASE("a NaN weight set through the API is an Error naming the first block it reaches, under every policy", "[nan][decoder]") {
  auto model = hf::load_decoder<float>(test::fixture("llama_tiny"));
  auto& mlp = static_cast<Mlp<float>&>(*model.blocks[1].branches[1].layer);
  mlp.down.weight(3, 5) = kNaN;
  const auto doc = tokens(40, model.config.vocab_size);
  namm::NammWeights<float> weights;
  weights.theta = Tensor<float>({namm::BamScorer<float>::kParams});
  weights.stats.var.fill(1.0);
  weights.config.n_up = 16;
  for (const char* policy : {"none", "namm", "h2o", "knorm", "streaming", "snapkv", "tova", "recency"}) {
    INFO(policy);
    const auto p = eval::make_policy<float>(policy, Budget::of_tokens(8), &weights);
    auto s = model.make_state(p.get());
    const std::string msg = error_of([&] { model.prefill(doc, s, {.chunk = 16}); });
    INFO(msg);
    CHECK(msg.find("block 1") != std::string::npos);
    CHECK(msg.find("position 0") != std::string::npos);  // the MLP is per token: the very first row
  }
  // Decode too: a NaN that appears at decode time names the position of the token being decoded.
  mlp.down.weight(3, 5) = 0.f;
  auto s = model.make_state();
  model.prefill(doc, s);
  mlp.down.weight(3, 5) = kNaN;
  const std::string msg = error_of([&] { model.decode(2, s); });
  CHECK(msg.find("block 1") != std::string::npos);
  CHECK(msg.find("position 40") != std::string::npos);
}

TEST_CASE("a NaN in GPT-2 and BERT weights is caught in the block it enters", "[nan][decoder]") {
  auto gpt2 = hf::load_decoder<float>(test::fixture("gpt2_tiny"));
  static_cast<SelfAttention<float>&>(*gpt2.blocks[0].branches[0].layer).out.weight(0, 0) = kNaN;
  auto s = gpt2.make_state();
  std::string msg = error_of([&] { gpt2.prefill(tokens(9, gpt2.config.vocab_size), s); });
  CHECK(msg.find("block 0") != std::string::npos);

  auto bert = hf::load_model<float>(test::fixture("rmt/encoder")).decoder;
  bert.blocks[1].branches[1].norm.weight[2] = kNaN;  // post-LN: the norm of block 1's MLP branch
  auto e = bert.make_state();
  msg = error_of([&] { bert.prefill(tokens(7, bert.config.vocab_size), e, {.all_logits = true}); });
  CHECK(msg.find("block 1") != std::string::npos);
}

TEST_CASE("a non-finite input embedding is an Error naming its position", "[nan][decoder]") {
  const auto model = hf::load_decoder<float>(test::fixture("llama_tiny"));
  auto s = model.make_state();
  model.prefill(tokens(5, model.config.vocab_size), s);
  Tensor<float> x({4, model.config.d_model});
  model.embed_tokens(tokens(4, model.config.vocab_size), x.view());
  x(2, 7) = std::numeric_limits<float>::infinity();
  const std::string msg = error_of([&] { model.forward_embeddings(x.view(), s); });
  INFO(msg);
  CHECK(msg.find("input embeddings") != std::string::npos);
  CHECK(msg.find("position 7") != std::string::npos);  // 5 tokens already read, row 2
  CHECK(msg.find("column 7") != std::string::npos);
}

TEST_CASE("logits that overflow are an Error, not an infinite score", "[nan][decoder]") {
  auto model = hf::load_decoder<float>(test::fixture("llama_tiny"));
  model.lm_head.weight.fill(3e38f);  // finite weights whose products with a unit-norm state overflow
  auto s = model.make_state();
  const std::string msg = error_of([&] { model.prefill(tokens(6, model.config.vocab_size), s); });
  INFO(msg);
  CHECK(msg.find("logits") != std::string::npos);
  CHECK(msg.find("position 5") != std::string::npos);
}

TEST_CASE("a non-finite RMT memory row is an Error naming the row, in both layouts", "[nan][rmt]") {
  for (const char* fixture : {"rmt/decoder", "rmt/encoder"}) {
    INFO(fixture);
    const auto loaded = rmt::load<float>(test::fixture(fixture));
    const auto& cell = loaded.cell();
    Tensor<float> memory = cell.initial_memory().copy();
    memory(1, 3) = kNaN;
    const rmt::RecurrentWrapper<float> wrapper(rmt::MemoryCell<float>(cell.shared_backbone(), cell.config(), std::move(memory)));
    auto s = wrapper.make_state({.total_tokens = 5});
    const std::string msg = error_of([&] {
      wrapper.push(tokens(5, cell.backbone().config.vocab_size), s);
      wrapper.finish(s);
    });
    INFO(msg);
    CHECK(msg.find("memory row 1") != std::string::npos);
  }
}

TEST_CASE("a non-finite TTT inner state is an Error naming the block and the token", "[nan][ttt]") {
  for (const char* fixture : {"ttt/model_linear_T", "ttt/model_mlp_M"}) {
    INFO(fixture);
    const auto model = ttt::load_decoder<float>(test::fixture(fixture));
    auto s = model.make_state();
    model.prefill(tokens(20, model.config.vocab_size), s);  // 20 tokens: a whole mini-batch (dual) and a partial one
    const Index block = 1, branch = model.blocks[1].branches.size() == 3 ? 1 : 0;  // the TTT branch (after the Mamba pre-conv)
    auto* st = dynamic_cast<ttt::State<float>*>(s.layer_state(block, branch));
    REQUIRE(st != nullptr);
    st->W1.data()[5] = kNaN;
    const std::string msg = error_of([&] { model.prefill(tokens(3, model.config.vocab_size), s); });
    INFO(msg);
    CHECK(msg.find("block 1") != std::string::npos);
    CHECK(msg.find("inner state") != std::string::npos);
    CHECK(msg.find("token 20") != std::string::npos);
  }
}
