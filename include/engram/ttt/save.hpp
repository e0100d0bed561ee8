// Writing a TTT model as ttt-lm-pytorch names it: config.json with the TTTConfig keys that
// config_from_json reads, and model.safetensors with the TTTForCausalLM state_dict names of the same
// bind_model table the loader uses, so a model trained here loads back with ttt::load_decoder.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "engram/io/hf_save.hpp"
#include "engram/ttt/loader.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// The ModelSpec of a TTT decoder (from make_decoder or load_decoder): its layer config from the
/// first block's TTT branch, the rest from the decoder's config. Throws for a model that is not a
/// TTT decoder or whose values config.json cannot express (inner or post_norm eps other than 1e-6).
template <class T>
ModelSpec spec_of(const Decoder<T>& m) {
  const char* where = "ttt::spec_of";
  check(m.config.architecture == "ttt", where, "expected a TTT decoder, got architecture \"", m.config.architecture, "\"");
  check(!m.blocks.empty(), where, "a TTT decoder without blocks has no layer config to save");
  const Layer<T>* layer = nullptr;
  for (const Branch<T>& br : m.blocks.front().branches)
    if (const auto* l = dynamic_cast<const Layer<T>*>(br.layer.get())) layer = l;
  check(layer != nullptr, where, "block 0 has no TTT branch");
  ModelSpec s;
  s.layer = layer->config;
  s.vocab_size = m.config.vocab_size;
  s.n_layers = Index(m.blocks.size());
  s.d_ff = m.config.d_ff;
  s.rms_eps = m.config.norm_eps;
  s.tie_embeddings = m.config.tie_embeddings;
  const Config defaults;
  check(s.layer.inner_eps == defaults.inner_eps && s.layer.post_norm_eps == defaults.post_norm_eps, where,
        "ttt-lm-pytorch fixes the inner and post_norm LayerNorm eps at 1e-6; this model has ", s.layer.inner_eps, " and ",
        s.layer.post_norm_eps);
  s.validate();
  return s;
}

/// config.json of a TTT model: every key config_from_json reads, as TTTConfig names them.
inline json::Value config_to_json(const ModelSpec& s) {
  const Config& c = s.layer;
  json::Value j = json::Value::object();
  auto set_int = [&](const char* k, Index v) { j.set(k, json::Value(std::int64_t(v))); };
  j.set("model_type", std::string("ttt"));
  j.set("architectures", json::Value::array({json::Value(std::string("TTTForCausalLM"))}));
  set_int("vocab_size", s.vocab_size);
  set_int("hidden_size", c.d_model);
  set_int("intermediate_size", s.d_ff);
  set_int("num_hidden_layers", s.n_layers);
  set_int("num_attention_heads", c.n_heads);
  j.set("hidden_act", std::string("silu"));
  j.set("rms_norm_eps", s.rms_eps);
  j.set("tie_word_embeddings", s.tie_embeddings);
  j.set("rope_theta", c.rope_theta);
  j.set("ttt_layer_type", std::string(c.kind == Kind::linear ? "linear" : "mlp"));
  j.set("ttt_base_lr", c.base_lr);
  set_int("mini_batch_size", c.mini_batch);
  j.set("share_qk", c.share_qk);
  j.set("use_gate", c.use_gate);
  j.set("pre_conv", c.pre_conv);
  set_int("conv_kernel", c.conv_kernel);
  return j;
}

/// The tensors of a TTT decoder under ttt-lm-pytorch's names (the tied head stored once, as
/// save_pretrained does).
template <class T>
safetensors::Writer export_weights(const Decoder<T>& decoder, safetensors::DType dtype = safetensors::DType::F32) {
  const ModelSpec spec = spec_of(decoder);
  static const SequenceClassifier<T> none;
  safetensors::Writer out;
  hf::WeightExporter<T> e(out, none, dtype);
  bind_model<T>(e, spec, const_cast<Decoder<T>&>(decoder));  // the table takes mutable references; the exporter only reads
  out.set_metadata("format", "pt");
  return out;
}

/// Writes `dir`/config.json and `dir`/model.safetensors (creating `dir`), loadable with
/// ttt::load_decoder (and by ttt-lm-pytorch's TTTForCausalLM). Tensors are stored as `dtype`.
template <class T>
void save_decoder(const Decoder<T>& decoder, const std::filesystem::path& dir, safetensors::DType dtype = safetensors::DType::F32) {
  check(decoder.weight_format() == WeightFormat::f32, "ttt::save_decoder", "the weights are stored as ", format_name(decoder.weight_format()),
        " for inference; save the f32 model (before compress_weights)");
  const std::string config = json::dump(config_to_json(spec_of(decoder)));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  check(!ec, dir.string(), "cannot create the directory: ", ec.message());
  const std::filesystem::path config_path = dir / "config.json";
  std::ofstream f(config_path, std::ios::trunc);
  check(bool(f), config_path.string(), "cannot open for writing");
  f << config << '\n';
  f.close();
  check(bool(f), config_path.string(), "write failed");
  export_weights(decoder, dtype).write((dir / "model.safetensors").string());
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
