// ARMT checkpoints: an HF backbone directory whose config.json has an "armt" object, with the
// memory tokens ("memory" [m, d]), the memory tokens' position rows appended to GPT-2's wpe (the
// official wrap_positional_embeddings: wpe is [n_positions + m, d]) and per layer the associative
// projections under the official names (h.<l>.W_m{q,k,v,b}.* for GPT-2, model.layers.<l>.W_m*.*
// for Llama); the loader, the saver, and the official initialisation.
#pragma once

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engram/io/hf_save.hpp"
#include "engram/rmt/armt.hpp"
#include "engram/rmt/save.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// Config from the "armt" object of a config.json: num_mem_tokens, segment_size, d_mem, optional
/// nu (3), n_heads (1), use_denom, correction (true), wrap_pos (true), segment_alignment ("left");
/// d_key, when stated, must be 2 nu d_mem. Only the official defaults are built: anything else is
/// an Error naming the key.
inline ArmtConfig armt_config_from_json(const json::Value& armt, const std::string& source = "config.json") {
  if (!armt.is_object()) fail(source, "\"armt\" must be an object, got ", armt.type_name());
  const io::ConfigReader r(armt, source, "armt.");
  ArmtConfig c = ArmtConfig::make(r.integer("num_mem_tokens", 1, Config::kMaxMemoryTokens), r.integer("segment_size", 1, Config::kMaxSegment),
                                  r.integer("d_mem", 1, ModelConfig::kMaxDim));
  c.nu = r.integer("nu", 1, 64, 3);
  if (r.integer("d_key", 1, ModelConfig::kMaxDim * 128, c.d_key()) != c.d_key()) r.bad("d_key", "must be 2 * nu * d_mem = " + std::to_string(c.d_key()));
  if (r.integer("n_heads", 1, 1, 1) != 1) r.bad("n_heads", "must be 1");
  if (!r.boolean("use_denom", true)) r.bad("use_denom", "must be true (the official default; the other variant is not built)");
  if (!r.boolean("correction", true)) r.bad("correction", "must be true (the official default; the other variant is not built)");
  if (!r.boolean("wrap_pos", true)) r.bad("wrap_pos", "must be true (memory tokens at their own position rows)");
  r.string("segment_alignment", std::string("left"), {"left"});
  return c;
}

/// The "armt" object of a config.json.
inline json::Value armt_config_to_json(const ArmtConfig& c) {
  json::Value j = json::Value::object();
  auto set_int = [&](const char* k, Index v) { j.set(k, json::Value(std::int64_t(v))); };
  set_int("num_mem_tokens", c.memory_tokens);
  set_int("segment_size", c.segment_size);
  set_int("d_mem", c.d_mem);
  set_int("nu", c.nu);
  set_int("d_key", c.d_key());
  set_int("n_heads", 1);
  j.set("wrap_pos", true);
  j.set("use_denom", true);
  j.set("correction", true);
  j.set("segment_alignment", std::string("left"));
  return j;
}

namespace detail {
// Where the associative projections of layer l live in a checkpoint of `architecture`.
inline std::string associative_prefix(const std::string& architecture, const std::string& backbone_prefix, Index l) {
  return architecture == "gpt2" ? backbone_prefix + "h." + std::to_string(l) + "." : "model.layers." + std::to_string(l) + ".";
}
}  // namespace detail

/// The official initialisation of the associative projections (torch.nn.Linear's default, U(-1/sqrt(d),
/// 1/sqrt(d)), with W_mv zero so every read adds 0 until training moves it), seeded.
template <class T>
std::vector<AssociativeMemory<T>> init_associative(const Decoder<T>& backbone, const ArmtConfig& c, std::uint64_t seed) {
  const Index d = backbone.config.d_model;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0 / std::sqrt(double(d)), 1.0 / std::sqrt(double(d)));
  std::vector<AssociativeMemory<T>> layers;
  for (std::size_t l = 0; l < backbone.blocks.size(); ++l) {
    AssociativeMemory<T> a(d, c.d_mem, c.nu);
    for (Tensor<T>* t : {&a.wq.weight, &a.wk.weight, &a.wb.weight, &a.wb.bias})
      for (Index r = 0; r < t->rows(); ++r)
        for (Index k = 0; k < t->cols(); ++k) t->row(r)[k] = T(u(rng));
    layers.push_back(std::move(a));
  }
  return layers;
}

/// Loads an ARMT from a checkpoint directory (config.json with an "armt" object + safetensors). A
/// checkpoint that does not match throws one Error naming every missing, unexpected or mis-shaped
/// tensor (memory, associative projections and the backbone's together); an RMT checkpoint (an
/// "rmt" object) is refused by name.
template <class T>
ArmtWrapper<T> load_armt(const std::filesystem::path& dir) {
  const std::filesystem::path config_path = dir / "config.json";
  json::Value cfg = read_json_file(config_path);
  check(cfg.is_object(), config_path.string(), "expected a JSON object");
  check(cfg.find("rmt") == nullptr, config_path.string(), "this is an RMT checkpoint (an \"rmt\" object): load it with rmt::load");
  check(cfg.find("armt") != nullptr, config_path.string(), "no \"armt\" object: not an ARMT checkpoint");
  const ArmtConfig c = armt_config_from_json(*cfg.find("armt"), config_path.string());
  // The memory tokens' position rows follow the backbone's (the table the checkpoint stores).
  const std::string model_type = cfg.find("model_type") && cfg.find("model_type")->is_string() ? cfg.find("model_type")->as_string() : "";
  if (model_type == "gpt2") {
    const io::ConfigReader r(cfg, config_path.string());
    cfg.set("n_positions", json::Value(std::int64_t(r.integer("n_positions", 1, Index(1) << 30, 1024) + c.memory_tokens)));
  }
  Tensor<T> memory;
  std::vector<AssociativeMemory<T>> layers;
  const Checkpoint ck = Checkpoint::open(dir);
  const hf::ExtraTensors<T> extra = [&](hf::WeightBinder<T>& b, hf::Model<T>& model) {
    const Index d = model.decoder.config.d_model, m = c.memory_tokens;
    memory = Tensor<T>({m, d});
    b.rows_into("memory", {m, d}, memory);
    const std::string bp = ck.contains("transformer.wte.weight") ? "transformer." : "";
    for (std::size_t l = 0; l < model.decoder.blocks.size(); ++l) {
      AssociativeMemory<T> a(d, c.d_mem, c.nu);
      const std::string p = detail::associative_prefix(model.decoder.config.architecture, bp, Index(l));
      b.rows_into(p + "W_mq.weight", {c.d_mem, d}, a.wq.weight);
      b.rows_into(p + "W_mk.weight", {c.d_mem, d}, a.wk.weight);
      b.rows_into(p + "W_mv.weight", {d, d}, a.wv.weight);
      b.rows_into(p + "W_mb.weight", {1, d}, a.wb.weight);
      b.rows_into(p + "W_mb.bias", {1}, a.wb.bias);
      layers.push_back(std::move(a));
    }
  };
  hf::Model<T> model = hf::load_model<T>(cfg, ck, dir.string(), extra);
  auto backbone = std::make_shared<const Decoder<T>>(std::move(model.decoder));
  try {
    return ArmtWrapper<T>(std::move(backbone), c, std::move(memory), std::move(layers));
  } catch (const Error& e) {
    fail(config_path.string(), e.what());
  }
}

/// Writes `dir` so that load_armt<T>(dir) returns the same model (config.json states the backbone's
/// n_positions without the memory rows, as the official checkpoints do).
template <class T>
void save(const ArmtWrapper<T>& model, const std::filesystem::path& dir, safetensors::DType dtype = safetensors::DType::F32) {
  const Decoder<T>& bb = model.backbone();
  json::Value config = hf::config_to_json(bb.config);
  if (bb.config.architecture == "gpt2") config.set("n_positions", json::Value(std::int64_t(bb.config.max_positions - model.memory_tokens())));
  config.set("armt", armt_config_to_json(model.config()));
  detail::write_config(dir, config);
  safetensors::Writer w = hf::export_weights<T>(bb, nullptr, dtype);
  w.add("memory", model.memory(), dtype);
  for (std::size_t l = 0; l < model.layers().size(); ++l) {
    const auto& a = model.layers()[l];
    const std::string p = detail::associative_prefix(bb.config.architecture, "transformer.", Index(l));
    w.add(p + "W_mq.weight", a.wq.weight, dtype);
    w.add(p + "W_mk.weight", a.wk.weight, dtype);
    w.add(p + "W_mv.weight", a.wv.weight, dtype);
    w.add(p + "W_mb.weight", a.wb.weight, dtype);
    w.add(p + "W_mb.bias", a.wb.bias, dtype);
  }
  w.write((dir / "model.safetensors").string());
}

/// Copies every parameter of the ARMT checkpoint `dir` into `model` (same shapes).
template <class T>
void load_parameters(ArmtWrapper<T>& model, const std::filesystem::path& dir) {
  ArmtWrapper<T> saved = load_armt<T>(dir);
  detail::copy_parameters<T>(saved, model, dir);
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
