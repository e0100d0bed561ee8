// libFuzzer target: any bytes given as a model's config.json, paired with the real fixture weights
// of the family the config names (Llama, GPT-2, BERT, TTT, RMT decoder and encoder layouts), either
// load (and then read a few tokens) or raise engram::Error; nothing else: no crash, no other
// exception, no leak, no allocation the checkpoint cannot justify (libFuzzer's -rss_limit_mb).
// Build with clang: cmake -DENGRAM_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..., then run
// ./tests/fuzz/fuzz_config -max_total_time=60 tests/fuzz/corpus_config
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "engram/engram.hpp"

namespace {
using namespace engram;

// Checkpoints opened once (memory-mapped, read-only), shared by every input.
struct Fixtures {
  std::filesystem::path root = ENGRAM_FIXTURES_DIR;
  Checkpoint llama = Checkpoint::open(root / "llama_tiny");
  Checkpoint gpt2 = Checkpoint::open(root / "gpt2_tiny");
  Checkpoint encoder = Checkpoint::open(root / "rmt/encoder");  // BERT (RMT encoder layout)
  Checkpoint rmt_decoder = Checkpoint::open(root / "rmt/decoder");
  Checkpoint ttt_linear = Checkpoint::open(root / "ttt/model_linear_T");
  Checkpoint ttt_mlp = Checkpoint::open(root / "ttt/model_mlp_M");
};

const Fixtures& fixtures() {
  static const Fixtures f;
  return f;
}

// A successful load must also run: a few tokens through the model.
void read_tokens(const Decoder<float>& m) {
  auto s = m.make_state();
  const std::int32_t v = std::int32_t(m.config.vocab_size);
  const std::vector<std::int32_t> tokens = {0, 1 % v, 2 % v};
  (void)m.prefill(tokens, s);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace engram;
  const Fixtures& fx = fixtures();
  try {
    const json::Value cfg = json::parse(std::string_view(reinterpret_cast<const char*>(data), size), "config.json");
    if (!cfg.is_object()) return 0;
    const json::Value* type = cfg.find("model_type");
    const std::string model_type = type && type->is_string() ? type->as_string() : "";
    if (const json::Value* rmt = cfg.find("rmt")) {
      const json::Value* layout = rmt->is_object() ? rmt->find("layout") : nullptr;
      const bool encoder = layout && layout->is_string() && layout->as_string() == "encoder";
      auto model = rmt::load<float>(cfg, encoder ? fx.encoder : fx.rmt_decoder, "fuzz");
      auto s = model.make_state();
      const std::vector<std::int32_t> tokens = {3, 4, 5};
      model.push(tokens, s);
      model.finish(s);
    } else if (model_type == "ttt") {
      const json::Value* kind = cfg.find("ttt_layer_type");
      const bool mlp = kind && kind->is_string() && kind->as_string() == "mlp";
      read_tokens(ttt::load_decoder<float>(cfg, mlp ? fx.ttt_mlp : fx.ttt_linear, "fuzz"));
    } else {
      const Checkpoint& ck = model_type == "gpt2" ? fx.gpt2 : model_type == "bert" ? fx.encoder : fx.llama;
      read_tokens(hf::load_model<float>(cfg, ck, "fuzz").decoder);
    }
  } catch (const Error&) {
  }
  return 0;
}
