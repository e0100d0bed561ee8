// Loading an RMT checkpoint: an HF backbone directory whose config.json has an "rmt" object; the
// decoder layout's learned memory is the extra tensor "memory" [m, d], the encoder layout's is the
// last m rows of the word embeddings (the memory tokens appended to the vocabulary).
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engram/io/hf.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/recurrent.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// Config from the "rmt" object of a config.json: num_mem_tokens, segment_size, layout ("decoder" |
/// "encoder"), optional memory_mask ("causal" | "bidirectional") and segment_alignment ("left" |
/// "right"); the encoder layout also needs input_size and cls/sep/pad_token_id. Each value is
/// range-checked as it is read; an Error names `source`, the key ("rmt.<key>") and the value.
inline Config config_from_json(const json::Value& rmt, const std::string& source = "config.json") {
  if (!rmt.is_object()) fail(source, "\"rmt\" must be an object, got ", rmt.type_name());
  const io::ConfigReader r(rmt, source, "rmt.");
  const std::string layout = r.string("layout", std::string("decoder"), {"decoder", "encoder"});
  const Index m = r.integer("num_mem_tokens", 0, Config::kMaxMemoryTokens);
  constexpr Index kMaxId = std::numeric_limits<std::int32_t>::max();
  Config c;
  if (layout == "decoder") {
    c = Config::decoder(m, r.integer("segment_size", 1, Config::kMaxSegment));
  } else {
    const Index input_size = r.integer("input_size", m + 4, Config::kMaxSegment);  // [CLS] memory [SEP] >= 1 token [SEP]
    c = Config::encoder(m, input_size, std::int32_t(r.integer("cls_token_id", 0, kMaxId)), std::int32_t(r.integer("sep_token_id", 0, kMaxId)),
                        std::int32_t(r.integer("pad_token_id", 0, kMaxId)));
    // segment_size is implied by input_size; a stated one must agree.
    const Index stated = r.integer("segment_size", 1, Config::kMaxSegment, c.segment_size);
    if (stated != c.segment_size) r.bad("segment_size", "must be input_size - num_mem_tokens - 3 = " + std::to_string(c.segment_size));
  }
  c.memory_mask = r.string("memory_mask", std::string("causal"), {"causal", "bidirectional"}) == "causal" ? MemoryMask::causal
                                                                                                        : MemoryMask::bidirectional;
  c.alignment = r.string("segment_alignment", std::string(name(c.alignment)), {"left", "right"}) == "left" ? Alignment::left : Alignment::right;
  return c;
}

/// Loads an RMT model: `cfg` is the parsed config.json (with its "rmt" object), `ck` the checkpoint,
/// `source` their name in errors. The RMT config is checked against the backbone's config before any
/// weight is allocated. A checkpoint that does not match throws one Error naming every missing,
/// unexpected or mis-shaped tensor, the memory included; a non-finite weight or memory value is an
/// Error too.
template <class T>
RecurrentWrapper<T> load(const json::Value& cfg, const Checkpoint& ck, const std::string& source) {
  const std::string config_source = (std::filesystem::path(source) / "config.json").string();
  check(cfg.is_object() && cfg.find("rmt") != nullptr, config_source, "no \"rmt\" object: not an RMT checkpoint");
  const Config config = config_from_json(*cfg.find("rmt"), config_source);
  try {
    config.validate(hf::config_from_json(cfg, config_source));
  } catch (const Error& e) {
    fail(config_source, e.what());
  }
  Tensor<T> memory;
  hf::ExtraTensors<T> extra;
  if (config.layout == Layout::decoder && config.memory_tokens > 0)
    extra = [&](hf::WeightBinder<T>& b, hf::Model<T>& model) {
      const std::vector<std::int64_t> shape = {config.memory_tokens, model.decoder.config.d_model};
      // Allocated only when the checkpoint holds it with this shape; otherwise the binder reports it.
      if (b.has("memory") && b.shape_of("memory") == shape) memory = Tensor<T>({shape[0], shape[1]});
      b.rows_into("memory", shape, memory);
    };
  hf::Model<T> model = hf::load_model<T>(cfg, ck, source, extra);
  if (config.layout == Layout::encoder) memory = vocabulary_memory(model.decoder, config.memory_tokens);
  auto backbone = std::make_shared<const Decoder<T>>(std::move(model.decoder));
  return RecurrentWrapper<T>(MemoryCell<T>(std::move(backbone), config, std::move(memory), std::move(model.classifier)));
}

/// Loads an RMT model from a checkpoint directory (config.json with an "rmt" object + safetensors).
template <class T>
RecurrentWrapper<T> load(const std::filesystem::path& dir) {
  const json::Value cfg = read_json_file(dir / "config.json");
  return load<T>(cfg, Checkpoint::open(dir), dir.string());
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
