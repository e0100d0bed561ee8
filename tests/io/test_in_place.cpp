// Loading with LoadOptions::weights: a BF16/F16 checkpoint's projections used in place (rows in the
// file's mapping, never converted) compute exactly what converting and compressing computes; other
// dtypes, transposed (Conv1D) weights and partly matching fused projections are converted; a
// non-finite stored weight is an Error naming its tensor; the mapping outlives the file's name.
#include <cstring>

#include "engram/io/hf.hpp"
#include "test_util.hpp"

using namespace engram;
namespace fs = std::filesystem;

namespace {

std::vector<std::int32_t> some_tokens(Index vocab) {
  std::vector<std::int32_t> t;
  for (Index i = 0; i < 12; ++i) t.push_back(std::int32_t((i * 29 + 5) % vocab));
  return t;
}

Tensor<float> logits(const Decoder<float>& m) {
  auto s = m.make_state();
  return m.prefill(some_tokens(m.config.vocab_size), s, {.all_logits = true});
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index r = 0; r < a.rows(); ++r)
    if (std::memcmp(a.row(r), b.row(r), sizeof(float) * std::size_t(a.cols())) != 0) return false;
  return true;
}

// Names of the Linears whose rows are in place, and whether the rest are stored in `format`.
std::vector<std::string> in_place_linears(Decoder<float>& m, WeightFormat format) {
  std::vector<std::string> names;
  m.visit_linears([&](const std::string& name, Linear<float>& l) {
    INFO(name);
    CHECK(l.format() == format);
    CHECK(l.weight.empty());
    if (l.compressed.in_place()) names.push_back(name);
  });
  return names;
}

// llama_tiny (F32) rewritten with every tensor in `dtype`, except `f32_tensor` (kept F32), with a
// NaN at element 0 of `nan_tensor`.
void rewrite(const fs::path& out, safetensors::DType dtype, const std::string& f32_tensor = "", const std::string& nan_tensor = "") {
  const fs::path fixture = test::fixture("llama_tiny");
  fs::copy_file(fixture / "config.json", out / "config.json");
  const auto file = safetensors::File::open((fixture / "model.safetensors").string());
  safetensors::Writer w;
  for (const auto& t : file.tensors()) {
    Tensor<float> x = file.read<float>(t.name);
    if (t.name == nan_tensor) x.row(0)[0] = NAN;
    w.add(t.name, x, t.name == f32_tensor ? safetensors::DType::F32 : dtype, t.shape);
  }
  w.write((out / "model.safetensors").string());
}

}  // namespace

TEST_CASE("a BF16 checkpoint's projections are used in place and compute as converting does", "[loader][weights]") {
  // The sharded BF16 Llama variant (two files, so two mappings; tied head).
  const fs::path dir = test::fixture("llama_tiny_variant");
  Decoder<float> in_place = hf::load_decoder<float>(dir, {.weights = WeightFormat::bf16});
  CHECK(in_place.weight_format() == WeightFormat::bf16);
  const auto names = in_place_linears(in_place, WeightFormat::bf16);
  Index linears = 0;
  in_place.visit_linears([&](const std::string&, Linear<float>&) { ++linears; });
  CHECK(Index(names.size()) == linears);  // every projection
  Decoder<float> converted = hf::load_decoder<float>(dir);
  converted.compress_weights(WeightFormat::bf16);
  CHECK(in_place.streamed_weight_bytes() == converted.streamed_weight_bytes());
  CHECK(same_bits(logits(in_place), logits(converted)));
  // Compressing to its own format again is the Error it always was.
  CHECK_THROWS_AS(in_place.compress_weights(WeightFormat::bf16), Error);
}

TEST_CASE("F16 in place, mixed dtypes, an F32 checkpoint and transposed weights", "[loader][weights]") {
  SECTION("F16 rows in place; the mapping outlives the file's name") {
    test::TempDir d;
    rewrite(d.path(), safetensors::DType::F16);
    Decoder<float> m = hf::load_decoder<float>(d.path(), {.weights = WeightFormat::f16});
    CHECK(in_place_linears(m, WeightFormat::f16).size() == 9);  // 2 x (qkv, out, up, down) + lm_head
    Decoder<float> ref = hf::load_decoder<float>(d.path());
    ref.compress_weights(WeightFormat::f16);
    const Tensor<float> want = logits(ref);
    fs::remove(d.path() / "model.safetensors");
    CHECK(same_bits(logits(m), want));
  }
  SECTION("a fused projection with one part in another dtype is converted, the rest stay in place") {
    test::TempDir d;
    rewrite(d.path(), safetensors::DType::BF16, "model.layers.1.self_attn.k_proj.weight");
    Decoder<float> m = hf::load_decoder<float>(d.path(), {.weights = WeightFormat::bf16});
    const auto names = in_place_linears(m, WeightFormat::bf16);
    CHECK(names.size() == 8);
    CHECK(std::find(names.begin(), names.end(), "blocks.1.0.qkv") == names.end());
    Decoder<float> ref = hf::load_decoder<float>(d.path());
    ref.compress_weights(WeightFormat::bf16);
    CHECK(same_bits(logits(m), logits(ref)));
  }
  SECTION("F16 rows asked for as bf16, and F32 rows, are converted") {
    for (auto dtype : {safetensors::DType::F16, safetensors::DType::F32}) {
      test::TempDir d;
      rewrite(d.path(), dtype);
      Decoder<float> m = hf::load_decoder<float>(d.path(), {.weights = WeightFormat::bf16});
      CHECK(in_place_linears(m, WeightFormat::bf16).empty());
      Decoder<float> ref = hf::load_decoder<float>(d.path());
      ref.compress_weights(WeightFormat::bf16);
      CHECK(same_bits(logits(m), logits(ref)));
    }
  }
  SECTION("GPT-2's Conv1D weights are stored transposed: converted; q8 quantises on load") {
    for (WeightFormat f : {WeightFormat::bf16, WeightFormat::q8}) {
      Decoder<float> m = hf::load_decoder<float>(test::fixture("gpt2_tiny"), {.weights = f});
      CHECK(in_place_linears(m, f).empty());
      Decoder<float> ref = hf::load_decoder<float>(test::fixture("gpt2_tiny"));
      ref.compress_weights(f);
      CHECK(same_bits(logits(m), logits(ref)));
    }
  }
}

TEST_CASE("a non-finite weight kept in place is an Error naming its tensor", "[loader][weights][errors]") {
  test::TempDir d;
  rewrite(d.path(), safetensors::DType::BF16, "", "model.layers.0.mlp.up_proj.weight");
  const std::string msg = test::error_of([&] { (void)hf::load_decoder<float>(d.path(), {.weights = WeightFormat::bf16}); });
  CHECK(msg.find("model.layers.0.mlp.up_proj.weight") != std::string::npos);
  CHECK(msg.find("non-finite") != std::string::npos);
  // Options that need float layers.
  CHECK_THROWS_AS(hf::load_decoder<double>(test::fixture("llama_tiny"), {.weights = WeightFormat::bf16}), Error);
}
