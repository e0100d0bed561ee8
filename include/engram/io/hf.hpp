// Hugging Face interoperability: config.json for Llama (and Mistral/Qwen2), GPT-2 and BERT, and
// loading a Decoder from a directory of config.json + safetensors with HF tensor names.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engram/io/checkpoint.hpp"
#include "engram/nn/classifier.hpp"
#include "engram/nn/decoder.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace hf {

namespace detail {
inline Index get_int(const json::Value& cfg, const char* key, std::optional<Index> fallback = std::nullopt) {
  const json::Value* v = cfg.find(key);
  if (!v || v->is_null()) {
    check(fallback.has_value(), "config.json", "missing required key \"", key, "\"");
    return *fallback;
  }
  return Index(v->as_integer(std::string("\"") + key + "\""));
}
inline double get_num(const json::Value& cfg, const char* key, double fallback) {
  const json::Value* v = cfg.find(key);
  return (!v || v->is_null()) ? fallback : v->as_number(std::string("\"") + key + "\"");
}
inline bool get_bool(const json::Value& cfg, const char* key, bool fallback) {
  const json::Value* v = cfg.find(key);
  return (!v || v->is_null()) ? fallback : v->as_bool(std::string("\"") + key + "\"");
}
inline std::string get_str(const json::Value& cfg, const char* key, std::string fallback) {
  const json::Value* v = cfg.find(key);
  return (!v || v->is_null()) ? fallback : v->as_string(std::string("\"") + key + "\"");
}
inline Activation activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::gelu_tanh;
  if (name == "gelu") return Activation::gelu_erf;
  if (name == "relu") return Activation::relu;
  fail("config.json", "unsupported activation \"", name, "\" (expected silu, gelu, gelu_new, gelu_pytorch_tanh or relu)");
}
inline RopeScaling rope_scaling(const json::Value& cfg) {
  RopeScaling s;
  const json::Value* v = cfg.find("rope_scaling");
  if (!v || v->is_null()) return s;
  check(v->is_object(), "config.json", "\"rope_scaling\" must be an object or null");
  const std::string type = get_str(*v, "rope_type", get_str(*v, "type", ""));
  s.factor = get_num(*v, "factor", 1.0);
  check(s.factor > 0, "config.json", "rope_scaling factor must be positive, got ", s.factor);
  if (type == "linear") {
    s.kind = RopeScaling::Kind::linear;
  } else if (type == "llama3") {
    s.kind = RopeScaling::Kind::llama3;
    s.low_freq_factor = get_num(*v, "low_freq_factor", 1.0);
    s.high_freq_factor = get_num(*v, "high_freq_factor", 4.0);
    s.original_max_positions = get_num(*v, "original_max_position_embeddings", 8192.0);
  } else if (type == "ntk") {
    s.kind = RopeScaling::Kind::ntk;
    s.alpha = get_num(*v, "alpha", 1.0);
  } else if (type == "default") {
    s.kind = RopeScaling::Kind::none;
  } else {
    fail("config.json", "rope_scaling type \"", type, "\" is not supported (supported: linear, llama3, ntk = static NTK with "
         "factor and alpha); dynamic NTK, whose frequencies change with the sequence length, is not supported");
  }
  return s;
}
}  // namespace detail

/// ModelConfig from a parsed config.json (model_type llama, mistral, qwen2, gpt2 or bert).
inline ModelConfig config_from_json(const json::Value& cfg) {
  using namespace detail;
  check(cfg.is_object(), "config.json", "expected a JSON object");
  const std::string type = get_str(cfg, "model_type", "");
  ModelConfig c;
  if (type == "llama" || type == "mistral" || type == "qwen2") {
    const Index d = get_int(cfg, "hidden_size"), heads = get_int(cfg, "num_attention_heads");
    c = ModelConfig::llama(get_int(cfg, "vocab_size"), d, get_int(cfg, "num_hidden_layers"), heads,
                           get_int(cfg, "num_key_value_heads", heads), get_int(cfg, "intermediate_size"));
    c.architecture = type;
    check(heads > 0, "config.json", "num_attention_heads must be positive");
    c.head_dim = get_int(cfg, "head_dim", d / heads);
    c.norm_eps = get_num(cfg, "rms_norm_eps", 1e-6);
    c.rope_theta = get_num(cfg, "rope_theta", 10000.0);
    c.rope_scaling = rope_scaling(cfg);
    c.max_positions = get_int(cfg, "max_position_embeddings", 4096);
    c.tie_embeddings = get_bool(cfg, "tie_word_embeddings", false);
    c.activation = activation(get_str(cfg, "hidden_act", "silu"));
    c.qkv_bias = get_bool(cfg, "attention_bias", type == "qwen2");
    c.out_bias = get_bool(cfg, "attention_bias", false);
    c.mlp_bias = get_bool(cfg, "mlp_bias", false);
    const json::Value* window = cfg.find("sliding_window");
    const bool windowed = window && !window->is_null() && get_bool(cfg, "use_sliding_window", type != "qwen2") &&
                          Index(window->as_number("\"sliding_window\"")) < c.max_positions;
    check(!windowed, "config.json", "sliding-window attention is not supported");
  } else if (type == "gpt2") {
    c = ModelConfig::gpt2(get_int(cfg, "vocab_size"), get_int(cfg, "n_embd"), get_int(cfg, "n_layer"), get_int(cfg, "n_head"),
                          get_int(cfg, "n_positions", 1024));
    c.d_ff = get_int(cfg, "n_inner", 4 * c.d_model);
    c.norm_eps = get_num(cfg, "layer_norm_epsilon", 1e-5);
    c.activation = activation(get_str(cfg, "activation_function", "gelu_new"));
    c.tie_embeddings = get_bool(cfg, "tie_word_embeddings", true);
  } else if (type == "bert") {
    c = ModelConfig::bert(get_int(cfg, "vocab_size"), get_int(cfg, "hidden_size"), get_int(cfg, "num_hidden_layers"),
                          get_int(cfg, "num_attention_heads"), get_int(cfg, "intermediate_size"),
                          get_int(cfg, "max_position_embeddings", 512));
    c.norm_eps = get_num(cfg, "layer_norm_eps", 1e-12);
    c.activation = activation(get_str(cfg, "hidden_act", "gelu"));
    c.type_vocab_size = get_int(cfg, "type_vocab_size", 2);
  } else {
    fail("config.json", "unsupported model_type \"", type, "\" (supported: llama, mistral, qwen2, gpt2, bert; TTT models load through engram/ttt)");
  }
  check(c.n_heads > 0 && c.d_model > 0, "config.json", "hidden size and head count must be positive");
  c.validate();
  return c;
}

/// Binds checkpoint tensors to destinations, collecting every problem (missing, mis-shaped,
/// unexpected) so a failed load reports all of them in one Error.
template <class T>
class WeightBinder {
 public:
  WeightBinder(const Checkpoint& ck, std::string source) : ck_(ck), source_(std::move(source)) {}

  bool has(const std::string& name) const { return ck_.contains(name); }
  std::vector<std::int64_t> shape_of(const std::string& name) const { return ck_.shape(name); }

  /// Copies tensor `name` of shape `shape` into rows [row0, row0 + shape[0]) of dst (rank 1 goes
  /// into row row0 of a [*, n] or the elements of a [n] tensor). With `transpose`, the stored
  /// tensor is [in, out] (Conv1D) and lands transposed.
  void rows_into(const std::string& name, std::vector<std::int64_t> shape, Tensor<T>& dst, Index row0 = 0, bool transpose = false) {
    if (!fetch(name, shape)) return;
    const Tensor<T> t = ck_.template read<T>(name);
    if (shape.size() == 1) {
      if (dst.rank() == 1) std::copy_n(t.data(), t.numel(), dst.data() + row0);
      else std::copy_n(t.data(), t.numel(), dst.row(row0));
      return;
    }
    if (!transpose) {
      for (Index r = 0; r < t.rows(); ++r) std::copy_n(t.row(r), t.cols(), dst.row(row0 + r));
    } else {
      for (Index r = 0; r < t.rows(); ++r)
        for (Index c = 0; c < t.cols(); ++c) dst(row0 + c, r) = t(r, c);
    }
  }
  /// Copies tensor `name` into a contiguous slice [offset, offset + numel) of a rank-1 tensor.
  void into(const std::string& name, std::vector<std::int64_t> shape, Tensor<T>& dst) { rows_into(name, std::move(shape), dst); }

  /// Marks names that may appear and are ignored (buffers, tied copies).
  void ignore_if(std::function<bool(const std::string&)> pred) { ignore_.push_back(std::move(pred)); }

  /// Throws one Error listing every problem, if any.
  void finish() {
    for (const std::string& n : ck_.names()) {
      if (used_.count(n)) continue;
      bool ignored = false;
      for (const auto& p : ignore_) ignored = ignored || p(n);
      if (!ignored) problems_.push_back("unexpected tensor " + n + " " + shape_str(ck_.shape(n)));
    }
    if (problems_.empty()) return;
    std::ostringstream msg;
    msg << problems_.size() << " problem(s) with the checkpoint tensors:";
    for (const auto& p : problems_) msg << "\n  " << p;
    fail(source_, msg.str());
  }

 private:
  static std::string shape_str(const std::vector<std::int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  bool fetch(const std::string& name, const std::vector<std::int64_t>& shape) {
    if (!ck_.contains(name)) {
      problems_.push_back("missing tensor " + name + " " + shape_str(shape));
      return false;
    }
    used_.insert(name);
    if (ck_.shape(name) != shape) {
      problems_.push_back("tensor " + name + " has shape " + shape_str(ck_.shape(name)) + ", expected " + shape_str(shape));
      return false;
    }
    return true;
  }
  const Checkpoint& ck_;
  std::string source_;
  std::vector<std::string> problems_;
  std::set<std::string> used_;
  std::vector<std::function<bool(const std::string&)>> ignore_;
};

/// A loaded model: the decoder (or encoder) and, for sequence-classification checkpoints, its head.
template <class T>
struct Model {
  Decoder<T> decoder;
  SequenceClassifier<T> classifier;  ///< empty unless the checkpoint has one
};

namespace detail {
inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

template <class T>
void bind_llama(WeightBinder<T>& b, Decoder<T>& m) {
  const ModelConfig& c = m.config;
  const std::int64_t C = c.d_model, H = c.n_heads, K = c.n_kv_heads, D = c.head_dim, F = c.d_ff;
  b.rows_into("model.embed_tokens.weight", {c.vocab_size, C}, m.embed.weight);
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto& attn = static_cast<SelfAttention<T>&>(*m.blocks[l].branches[0].layer);
    auto& mlp = static_cast<Mlp<T>&>(*m.blocks[l].branches[1].layer);
    b.rows_into(p + "input_layernorm.weight", {C}, m.blocks[l].branches[0].norm.weight);
    b.rows_into(p + "self_attn.q_proj.weight", {H * D, C}, attn.qkv.weight, 0);
    b.rows_into(p + "self_attn.k_proj.weight", {K * D, C}, attn.qkv.weight, H * D);
    b.rows_into(p + "self_attn.v_proj.weight", {K * D, C}, attn.qkv.weight, (H + K) * D);
    if (c.qkv_bias) {
      b.rows_into(p + "self_attn.q_proj.bias", {H * D}, attn.qkv.bias, 0);
      b.rows_into(p + "self_attn.k_proj.bias", {K * D}, attn.qkv.bias, H * D);
      b.rows_into(p + "self_attn.v_proj.bias", {K * D}, attn.qkv.bias, (H + K) * D);
    }
    b.rows_into(p + "self_attn.o_proj.weight", {C, H * D}, attn.out.weight);
    if (c.out_bias) b.rows_into(p + "self_attn.o_proj.bias", {C}, attn.out.bias);
    b.rows_into(p + "post_attention_layernorm.weight", {C}, m.blocks[l].branches[1].norm.weight);
    b.rows_into(p + "mlp.gate_proj.weight", {F, C}, mlp.up.weight, 0);
    b.rows_into(p + "mlp.up_proj.weight", {F, C}, mlp.up.weight, F);
    b.rows_into(p + "mlp.down_proj.weight", {C, F}, mlp.down.weight);
    if (c.mlp_bias) {
      b.rows_into(p + "mlp.gate_proj.bias", {F}, mlp.up.bias, 0);
      b.rows_into(p + "mlp.up_proj.bias", {F}, mlp.up.bias, F);
      b.rows_into(p + "mlp.down_proj.bias", {C}, mlp.down.bias);
    }
  }
  b.rows_into("model.norm.weight", {C}, m.final_norm.weight);
  if (!c.tie_embeddings) b.rows_into("lm_head.weight", {c.vocab_size, C}, m.lm_head.weight);
  b.ignore_if([&](const std::string& n) { return ends_with(n, "rotary_emb.inv_freq") || (c.tie_embeddings && n == "lm_head.weight"); });
}

template <class T>
void bind_norm(WeightBinder<T>& b, const std::string& p, std::int64_t C, Norm<T>& n) {
  b.rows_into(p + ".weight", {C}, n.weight);
  b.rows_into(p + ".bias", {C}, n.bias);
}

template <class T>
void bind_gpt2(WeightBinder<T>& b, Decoder<T>& m, const std::string& p) {
  const ModelConfig& c = m.config;
  const std::int64_t C = c.d_model, F = c.d_ff;
  b.rows_into(p + "wte.weight", {c.vocab_size, C}, m.embed.weight);
  b.rows_into(p + "wpe.weight", {c.max_positions, C}, m.position_table);
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string h = p + "h." + std::to_string(l) + ".";
    auto& attn = static_cast<SelfAttention<T>&>(*m.blocks[l].branches[0].layer);
    auto& mlp = static_cast<Mlp<T>&>(*m.blocks[l].branches[1].layer);
    bind_norm(b, h + "ln_1", C, m.blocks[l].branches[0].norm);
    b.rows_into(h + "attn.c_attn.weight", {C, 3 * C}, attn.qkv.weight, 0, /*transpose=*/true);  // Conv1D: [in, out]
    b.rows_into(h + "attn.c_attn.bias", {3 * C}, attn.qkv.bias);
    b.rows_into(h + "attn.c_proj.weight", {C, C}, attn.out.weight, 0, true);
    b.rows_into(h + "attn.c_proj.bias", {C}, attn.out.bias);
    bind_norm(b, h + "ln_2", C, m.blocks[l].branches[1].norm);
    b.rows_into(h + "mlp.c_fc.weight", {C, F}, mlp.up.weight, 0, true);
    b.rows_into(h + "mlp.c_fc.bias", {F}, mlp.up.bias);
    b.rows_into(h + "mlp.c_proj.weight", {F, C}, mlp.down.weight, 0, true);
    b.rows_into(h + "mlp.c_proj.bias", {C}, mlp.down.bias);
  }
  bind_norm(b, p + "ln_f", C, m.final_norm);
  b.ignore_if([](const std::string& n) { return ends_with(n, ".attn.bias") || ends_with(n, ".attn.masked_bias") || n == "lm_head.weight"; });
}

template <class T>
void bind_bert(WeightBinder<T>& b, Model<T>& model, const std::string& p) {
  Decoder<T>& m = model.decoder;
  const ModelConfig& c = m.config;
  const std::int64_t C = c.d_model, F = c.d_ff;
  b.rows_into(p + "embeddings.word_embeddings.weight", {c.vocab_size, C}, m.embed.weight);
  b.rows_into(p + "embeddings.position_embeddings.weight", {c.max_positions, C}, m.position_table);
  b.rows_into(p + "embeddings.token_type_embeddings.weight", {c.type_vocab_size, C}, m.type_table);
  bind_norm(b, p + "embeddings.LayerNorm", C, m.embedding_norm);
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string e = p + "encoder.layer." + std::to_string(l) + ".";
    auto& attn = static_cast<SelfAttention<T>&>(*m.blocks[l].branches[0].layer);
    auto& mlp = static_cast<Mlp<T>&>(*m.blocks[l].branches[1].layer);
    const char* parts[] = {"query", "key", "value"};
    for (int i = 0; i < 3; ++i) {
      b.rows_into(e + "attention.self." + parts[i] + ".weight", {C, C}, attn.qkv.weight, i * C);
      b.rows_into(e + "attention.self." + parts[i] + ".bias", {C}, attn.qkv.bias, i * C);
    }
    b.rows_into(e + "attention.output.dense.weight", {C, C}, attn.out.weight);
    b.rows_into(e + "attention.output.dense.bias", {C}, attn.out.bias);
    bind_norm(b, e + "attention.output.LayerNorm", C, m.blocks[l].branches[0].norm);
    b.rows_into(e + "intermediate.dense.weight", {F, C}, mlp.up.weight);
    b.rows_into(e + "intermediate.dense.bias", {F}, mlp.up.bias);
    b.rows_into(e + "output.dense.weight", {C, F}, mlp.down.weight);
    b.rows_into(e + "output.dense.bias", {C}, mlp.down.bias);
    bind_norm(b, e + "output.LayerNorm", C, m.blocks[l].branches[1].norm);
  }
  if (b.has("classifier.weight")) {
    const std::int64_t labels = b.shape_of("classifier.weight").at(0);
    model.classifier.pooler = Linear<T>(C, C, true);
    model.classifier.classifier = Linear<T>(C, labels, true);
    b.rows_into(p + "pooler.dense.weight", {C, C}, model.classifier.pooler.weight);
    b.rows_into(p + "pooler.dense.bias", {C}, model.classifier.pooler.bias);
    b.rows_into("classifier.weight", {labels, C}, model.classifier.classifier.weight);
    b.rows_into("classifier.bias", {labels}, model.classifier.classifier.bias);
  }
  // A bare encoder checkpoint may carry a pooler without a classifier: not needed, ignored.
  const bool has_classifier = b.has("classifier.weight");
  b.ignore_if([=](const std::string& n) {
    return ends_with(n, "position_ids") || (!has_classifier && n.find("pooler.") != std::string::npos);
  });
}
}  // namespace detail

/// Binds tensors that a wrapper adds to a backbone checkpoint (e.g. an RMT memory) through the
/// same binder, so their problems are reported together with the backbone's.
template <class T>
using ExtraTensors = std::function<void(WeightBinder<T>&, Model<T>&)>;

/// Loads config.json and the safetensors weights (single file or sharded) of a Llama-family,
/// GPT-2 or BERT checkpoint directory. Weights in F32, F16 or BF16 are converted to T. A
/// checkpoint whose tensors do not match the config throws one Error that names every missing,
/// unexpected or mis-shaped tensor. `extra` (optional) binds tensors beyond the architecture's.
template <class T>
Model<T> load_model(const std::filesystem::path& dir, const ExtraTensors<T>& extra = {}) {
  const json::Value cfg = read_json_file(dir / "config.json");
  Model<T> model{Decoder<T>::create(config_from_json(cfg)), {}};
  const Checkpoint ck = Checkpoint::open(dir);
  WeightBinder<T> b(ck, dir.string());
  const std::string& arch = model.decoder.config.architecture;
  if (arch == "gpt2") detail::bind_gpt2(b, model.decoder, ck.contains("transformer.wte.weight") ? "transformer." : "");
  else if (arch == "bert") detail::bind_bert(b, model, ck.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "");
  else detail::bind_llama(b, model.decoder);
  if (extra) extra(b, model);
  b.finish();
  return model;
}

/// load_model(dir).decoder.
template <class T>
Decoder<T> load_decoder(const std::filesystem::path& dir) {
  return std::move(load_model<T>(dir).decoder);
}

}  // namespace hf
ENGRAM_NAMESPACE_END
