// Loading an RMT checkpoint: an HF backbone directory whose config.json has an "rmt" object; the
// decoder layout's learned memory is the extra tensor "memory" [m, d], the encoder layout's is the
// last m rows of the word embeddings (the memory tokens appended to the vocabulary).
#pragma once

#include <filesystem>
#include <memory>

#include "engram/io/hf.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/recurrent.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// Config from the "rmt" object of a config.json: num_mem_tokens, segment_size, layout ("decoder" |
/// "encoder"), optional memory_mask ("causal" | "bidirectional") and segment_alignment ("left" |
/// "right"); the encoder layout also needs input_size and cls/sep/pad_token_id.
inline Config config_from_json(const json::Value& rmt) {
  using hf::detail::get_int;
  using hf::detail::get_str;
  check(rmt.is_object(), "config.json", "\"rmt\" must be an object");
  const std::string layout = get_str(rmt, "layout", "decoder");
  const Index m = get_int(rmt, "num_mem_tokens");
  Config c;
  if (layout == "decoder") {
    c = Config::decoder(m, get_int(rmt, "segment_size"));
  } else if (layout == "encoder") {
    const Index input_size = get_int(rmt, "input_size");
    c = Config::encoder(m, input_size, std::int32_t(get_int(rmt, "cls_token_id")), std::int32_t(get_int(rmt, "sep_token_id")),
                        std::int32_t(get_int(rmt, "pad_token_id")));
    // segment_size is implied by input_size; a stated one must agree (validate() names both).
    c.segment_size = get_int(rmt, "segment_size", c.segment_size);
  } else {
    fail("config.json", "rmt layout \"", layout, "\" is not supported (expected decoder or encoder)");
  }
  const std::string mask = get_str(rmt, "memory_mask", "causal");
  check(mask == "causal" || mask == "bidirectional", "config.json", "rmt memory_mask \"", mask, "\" (expected causal or bidirectional)");
  c.memory_mask = mask == "causal" ? MemoryMask::causal : MemoryMask::bidirectional;
  const std::string align = get_str(rmt, "segment_alignment", std::string(name(c.alignment)));
  check(align == "left" || align == "right", "config.json", "rmt segment_alignment \"", align, "\" (expected left or right)");
  c.alignment = align == "left" ? Alignment::left : Alignment::right;
  return c;
}

/// Loads an RMT model from a checkpoint directory (config.json with an "rmt" object + safetensors).
/// A checkpoint that does not match throws one Error naming every missing, unexpected or
/// mis-shaped tensor, the memory included.
template <class T>
RecurrentWrapper<T> load(const std::filesystem::path& dir) {
  const json::Value cfg = read_json_file(dir / "config.json");
  const json::Value* rmt = cfg.find("rmt");
  check(rmt != nullptr, (dir / "config.json").string(), "no \"rmt\" object: not an RMT checkpoint");
  const Config config = config_from_json(*rmt);
  check(config.memory_tokens >= 0, (dir / "config.json").string(), "num_mem_tokens must be >= 0, got ", config.memory_tokens);
  Tensor<T> memory;
  hf::ExtraTensors<T> extra;
  if (config.layout == Layout::decoder && config.memory_tokens > 0)
    extra = [&](hf::WeightBinder<T>& b, hf::Model<T>& model) {
      const Index d = model.decoder.config.d_model;
      memory = Tensor<T>({config.memory_tokens, d});
      b.rows_into("memory", {config.memory_tokens, d}, memory);
    };
  hf::Model<T> model = hf::load_model<T>(dir, extra);
  if (config.layout == Layout::encoder) memory = vocabulary_memory(model.decoder, config.memory_tokens);
  auto backbone = std::make_shared<const Decoder<T>>(std::move(model.decoder));
  return RecurrentWrapper<T>(MemoryCell<T>(std::move(backbone), config, std::move(memory), std::move(model.classifier)));
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
