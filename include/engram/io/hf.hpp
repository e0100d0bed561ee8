// Hugging Face interoperability: config.json for Llama (and Mistral/Qwen2), GPT-2 and BERT, and
// loading a Decoder from a directory of config.json + safetensors with HF tensor names.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engram/io/checkpoint.hpp"
#include "engram/io/config_reader.hpp"
#include "engram/io/memory_budget.hpp"
#include "engram/nn/classifier.hpp"
#include "engram/nn/decoder.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace hf {

namespace detail {
inline Activation activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::gelu_tanh;
  if (name == "gelu") return Activation::gelu_erf;
  if (name == "relu") return Activation::relu;
  fail("config.json", "unsupported activation \"", name, "\" (expected silu, gelu, gelu_new, gelu_pytorch_tanh or relu)");
}
inline RopeScaling rope_scaling(const io::ConfigReader& cfg) {
  RopeScaling s;
  if (!cfg.has("rope_scaling")) return s;
  const io::ConfigReader r = cfg.object("rope_scaling");
  const std::string type = r.has("rope_type") ? r.string("rope_type") : r.string("type", "");
  constexpr double kMaxFactor = 1e6;  // context multipliers beyond a million are not a model, they are a typo
  s.factor = r.number("factor", 0.0, kMaxFactor, 1.0, /*lo_open=*/true);
  if (type == "linear") {
    s.kind = RopeScaling::Kind::linear;
  } else if (type == "llama3") {
    s.kind = RopeScaling::Kind::llama3;
    s.low_freq_factor = r.number("low_freq_factor", 0.0, kMaxFactor, 1.0, true);
    s.high_freq_factor = r.number("high_freq_factor", 0.0, kMaxFactor, 4.0, true);
    if (!(s.high_freq_factor > s.low_freq_factor)) r.bad("high_freq_factor", "must be greater than low_freq_factor");
    s.original_max_positions = double(r.integer("original_max_position_embeddings", 1, std::numeric_limits<std::int32_t>::max(), 8192));
  } else if (type == "ntk") {
    s.kind = RopeScaling::Kind::ntk;
    s.alpha = r.number("alpha", 0.0, kMaxFactor, 1.0, true);
    if (!(s.alpha * s.factor - (s.alpha - 1.0) > 0)) r.bad("alpha", "alpha * factor - (alpha - 1) must be positive (the NTK base)");
  } else if (type == "default") {
    s.kind = RopeScaling::Kind::none;
  } else {
    fail(cfg.source(), "rope_scaling type \"", type, "\" is not supported (supported: linear, llama3, ntk = static NTK with "
         "factor and alpha); dynamic NTK, whose frequencies change with the sequence length, is not supported");
  }
  return s;
}

// Bounds of the config keys (see ModelConfig::validate for why these suffice).
inline constexpr Index kMaxDim = ModelConfig::kMaxDim;
inline constexpr Index kMaxVocab = std::numeric_limits<std::int32_t>::max();  // token ids are int32
inline constexpr Index kMaxPositions = std::numeric_limits<std::int32_t>::max();

// A head count that must divide a width (when head_dim is implied by it).
inline void check_divides(const io::ConfigReader& r, const char* heads_key, Index heads, const char* width_key, Index width) {
  if (width % heads != 0)
    r.bad(heads_key, std::string("must divide \"") + width_key + "\" = " + std::to_string(width));
}
}  // namespace detail

/// ModelConfig from a parsed config.json (model_type llama, mistral, qwen2, gpt2 or bert). Every key
/// is checked as it is read (type, range, divisibility); an Error names `source`, the key, the value
/// and what was expected. Nothing is allocated here.
inline ModelConfig config_from_json(const json::Value& cfg, const std::string& source = "config.json") {
  using namespace detail;
  const io::ConfigReader r(cfg, source);
  const std::string type = r.string("model_type", std::string(""));
  ModelConfig c;
  auto act = [&](const char* key, const char* fallback) {
    return activation(r.string(key, std::string(fallback), {"silu", "swish", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu"}));
  };
  if (type == "llama" || type == "mistral" || type == "qwen2") {
    const Index d = r.integer("hidden_size", 1, kMaxDim), heads = r.integer("num_attention_heads", 1, kMaxDim);
    const Index kv = r.integer("num_key_value_heads", 1, heads, heads);
    if (heads % kv != 0) r.bad("num_key_value_heads", "must divide \"num_attention_heads\" = " + std::to_string(heads));
    if (!r.has("head_dim")) check_divides(r, "num_attention_heads", heads, "hidden_size", d);
    c = ModelConfig::llama(r.integer("vocab_size", 1, kMaxVocab), d, r.integer("num_hidden_layers", 0, kMaxDim), heads, kv,
                           r.integer("intermediate_size", 1, 16 * kMaxDim));
    c.architecture = type;
    c.head_dim = r.integer("head_dim", 1, kMaxDim, d / heads);
    if (c.head_dim % 2 != 0) r.bad(r.has("head_dim") ? "head_dim" : "num_attention_heads", "RoPE needs an even head_dim, got " + std::to_string(c.head_dim));
    c.norm_eps = r.number("rms_norm_eps", 0.0, 1.0, 1e-6, true);
    c.rope_theta = r.number("rope_theta", 0.0, 1e15, 10000.0, true);
    c.rope_scaling = rope_scaling(r);
    if (c.rope_scaling.kind == RopeScaling::Kind::ntk && c.head_dim <= 2) r.bad("head_dim", "NTK scaling needs head_dim > 2");
    c.max_positions = r.integer("max_position_embeddings", 1, kMaxPositions, 4096);
    c.tie_embeddings = r.boolean("tie_word_embeddings", false);
    c.activation = act("hidden_act", "silu");
    c.qkv_bias = r.boolean("attention_bias", type == "qwen2");
    c.out_bias = r.boolean("attention_bias", false);
    c.mlp_bias = r.boolean("mlp_bias", false);
    // Mistral's window (Qwen2 only with use_sliding_window); a window covering every position is full attention.
    if (r.has("sliding_window") && r.boolean("use_sliding_window", type != "qwen2")) {
      const Index window = r.integer("sliding_window", 1, std::numeric_limits<std::int64_t>::max());
      c.sliding_window = window < c.max_positions ? window : 0;
    }
  } else if (type == "gpt2") {
    const Index d = r.integer("n_embd", 1, kMaxDim), heads = r.integer("n_head", 1, kMaxDim);
    check_divides(r, "n_head", heads, "n_embd", d);
    c = ModelConfig::gpt2(r.integer("vocab_size", 1, kMaxVocab), d, r.integer("n_layer", 0, kMaxDim), heads,
                          r.integer("n_positions", 1, kMaxPositions, 1024));
    c.d_ff = r.integer("n_inner", 1, 16 * kMaxDim, 4 * c.d_model);
    c.norm_eps = r.number("layer_norm_epsilon", 0.0, 1.0, 1e-5, true);
    c.activation = act("activation_function", "gelu_new");
    c.tie_embeddings = r.boolean("tie_word_embeddings", true);
  } else if (type == "bert") {
    const Index d = r.integer("hidden_size", 1, kMaxDim), heads = r.integer("num_attention_heads", 1, kMaxDim);
    check_divides(r, "num_attention_heads", heads, "hidden_size", d);
    c = ModelConfig::bert(r.integer("vocab_size", 1, kMaxVocab), d, r.integer("num_hidden_layers", 0, kMaxDim), heads,
                          r.integer("intermediate_size", 1, 16 * kMaxDim), r.integer("max_position_embeddings", 1, kMaxPositions, 512));
    c.norm_eps = r.number("layer_norm_eps", 0.0, 1.0, 1e-12, true);
    c.activation = act("hidden_act", "gelu");
    c.type_vocab_size = r.integer("type_vocab_size", 0, kMaxDim, 2);
  } else {
    fail(source, "unsupported model_type \"", type, "\" (supported: llama, mistral, qwen2, gpt2, bert; TTT models load through engram/ttt)");
  }
  try {
    c.validate();
  } catch (const Error& e) {  // every key is checked above; this is the last word on combinations
    fail(source, e.what());
  }
  return c;
}

/// The size budget of the model `c` describes: its weights (as T) and one token of its KV cache.
template <class T>
io::ModelSize model_size(const ModelConfig& c) {
  return {c.weight_elements(), sizeof(T), c.kv_bytes_per_token(sizeof(T))};
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
    if (!finite(name, t)) return;
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

  /// Keeps the Linear weights stored in `format`'s dtype (bf16: BF16 tensors, f16: F16) where they
  /// are, in the checkpoint's mapping: linear_rows then records their rows instead of converting.
  void keep_in_place(WeightFormat format) {
    check(format == WeightFormat::bf16 || format == WeightFormat::f16, source_, "weights used in place are bf16 or f16, not ",
          format_name(format));
    in_place_ = format;
  }

  /// Tensor `name` [shape] as rows [row0, row0 + shape[0]) of `dst`'s weight. In place (see
  /// keep_in_place) when the tensor has the kept dtype and is not transposed: its rows are pointers
  /// into the mapping, checked finite but not converted; otherwise as rows_into.
  void linear_rows(const std::string& name, std::vector<std::int64_t> shape, Linear<T>& dst, Index row0 = 0, bool transpose = false) {
    if (transpose || !kept_in_place(name, shape)) return rows_into(name, std::move(shape), dst.weight, row0, transpose);
    if (!fetch(name, shape) || !finite_in_place(name)) return;
    const auto [bytes, owner] = ck_.raw(name);
    Pending& p = pending_[&dst];
    p.rows.resize(std::size_t(dst.weight.rows()), nullptr);
    for (Index r = 0; r < Index(shape[0]); ++r) p.rows[std::size_t(row0 + r)] = bytes.data() + 2 * r * Index(shape[1]);
    p.owners.push_back(owner);
  }

  /// A tied LM head: with keep_in_place and the embedding `name` (bound by rows_into, so already
  /// checked) stored in the kept dtype, the head's products read the embedding's rows in place.
  void tied_head(const std::string& name, Decoder<T>& m) {
    if constexpr (std::is_same_v<T, float>) {
      if (!ck_.contains(name) || !kept_in_place(name, ck_.shape(name))) return;
      const auto [bytes, owner] = ck_.raw(name);
      const Index rows = Index(ck_.shape(name)[0]), cols = Index(ck_.shape(name)[1]);
      std::vector<const unsigned char*> at(static_cast<std::size_t>(rows));
      for (Index r = 0; r < rows; ++r) at[std::size_t(r)] = bytes.data() + 2 * r * cols;
      tied_rows_ = CompressedMatrix::external(in_place_, cols, std::move(at), owner);
      tied_to_ = &m;
    }
  }

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
    if (!problems_.empty()) {
      std::ostringstream msg;
      msg << problems_.size() << " problem(s) with the checkpoint tensors:";
      for (const auto& p : problems_) msg << "\n  " << p;
      fail(source_, msg.str());
    }
    // Linears bound in place: wholly (every row in the mapping) they keep those rows; partly (a fused
    // projection whose parts have different dtypes) the mapped rows are converted into the f32 weight.
    if constexpr (std::is_same_v<T, float>)
      for (auto& [lin, p] : pending_) {
        const bool whole = std::all_of(p.rows.begin(), p.rows.end(), [](const unsigned char* r) { return r != nullptr; });
        const Index cols = lin->weight.cols();
        if (whole) {
          auto owners = std::make_shared<const std::vector<std::shared_ptr<const void>>>(std::move(p.owners));
          lin->adopt(CompressedMatrix::external(in_place_, cols, std::move(p.rows), owners));
          continue;
        }
        for (std::size_t r = 0; r < p.rows.size(); ++r)
          if (p.rows[r])
            for (Index c = 0; c < cols; ++c) lin->weight(Index(r), c) = decode_weight(in_place_, p.rows[r], c);
      }
    pending_.clear();
    if (tied_to_) tied_to_->adopt_tied_head(std::move(tied_rows_));
    tied_to_ = nullptr;
  }

 private:
  static std::string shape_str(const std::vector<std::int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  // Records the problem; false.
  bool non_finite(const std::string& name, double value, Index element) {
    std::ostringstream at;
    at << "tensor " << name << " holds a non-finite value (" << value << ") at element " << element;
    problems_.push_back(at.str());
    return false;
  }
  // Whether tensor `name` [shape] is a matrix in the dtype keep_in_place asked for.
  bool kept_in_place(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const safetensors::DType kept = in_place_ == WeightFormat::bf16 ? safetensors::DType::BF16 : safetensors::DType::F16;
    return std::is_same_v<T, float> && in_place_ != WeightFormat::f32 && shape.size() == 2 && ck_.contains(name) && ck_.info(name).dtype == kept;
  }
  // finite() for a tensor kept in place: every stored value decoded and checked, none converted.
  bool finite_in_place(const std::string& name) {
    const auto bytes = ck_.raw(name).first;
    for (std::size_t i = 0; 2 * i < bytes.size(); ++i) {
      std::uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      const float v = in_place_ == WeightFormat::bf16 ? bf16_to_float(h) : half_to_float(h);
      if (!std::isfinite(v)) return non_finite(name, v, Index(i));
    }
    return true;
  }
  // Every weight is finite (NaN/Inf policy: checked once, at load): a problem otherwise.
  bool finite(const std::string& name, const Tensor<T>& t) {
    for (Index r = 0; r < t.rows(); ++r) {
      const T* row = t.row(r);
      bool ok = true;
      for (Index c = 0; c < t.cols(); ++c) ok &= std::isfinite(row[c]);
      if (ok) continue;
      for (Index c = 0; c < t.cols(); ++c)
        if (!std::isfinite(row[c])) return non_finite(name, double(row[c]), r * t.cols() + c);
    }
    return true;
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
  struct Pending {  // a Linear's rows in the mapping (null: bound from a tensor of another dtype)
    std::vector<const unsigned char*> rows;
    std::vector<std::shared_ptr<const void>> owners;
  };
  const Checkpoint& ck_;
  std::string source_;
  WeightFormat in_place_ = WeightFormat::f32;
  std::map<Linear<T>*, Pending> pending_;
  Decoder<T>* tied_to_ = nullptr;  // adopts tied_rows_ as its tied head once every check passed
  CompressedMatrix tied_rows_;
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

// The bind_* functions name every tensor of an architecture once, for both directions: with a
// WeightBinder they load a checkpoint, with hf::WeightExporter (io/hf_save.hpp) they write one.
template <class T, class Binder>
void bind_llama(Binder& b, Decoder<T>& m) {
  const ModelConfig& c = m.config;
  const std::int64_t C = c.d_model, H = c.n_heads, K = c.n_kv_heads, D = c.head_dim, F = c.d_ff;
  b.rows_into("model.embed_tokens.weight", {c.vocab_size, C}, m.embed.weight);
  if (c.tie_embeddings) b.tied_head("model.embed_tokens.weight", m);
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto& attn = static_cast<SelfAttention<T>&>(*m.blocks[l].branches[0].layer);
    auto& mlp = static_cast<Mlp<T>&>(*m.blocks[l].branches[1].layer);
    b.rows_into(p + "input_layernorm.weight", {C}, m.blocks[l].branches[0].norm.weight);
    b.linear_rows(p + "self_attn.q_proj.weight", {H * D, C}, attn.qkv, 0);
    b.linear_rows(p + "self_attn.k_proj.weight", {K * D, C}, attn.qkv, H * D);
    b.linear_rows(p + "self_attn.v_proj.weight", {K * D, C}, attn.qkv, (H + K) * D);
    if (c.qkv_bias) {
      b.rows_into(p + "self_attn.q_proj.bias", {H * D}, attn.qkv.bias, 0);
      b.rows_into(p + "self_attn.k_proj.bias", {K * D}, attn.qkv.bias, H * D);
      b.rows_into(p + "self_attn.v_proj.bias", {K * D}, attn.qkv.bias, (H + K) * D);
    }
    b.linear_rows(p + "self_attn.o_proj.weight", {C, H * D}, attn.out);
    if (c.out_bias) b.rows_into(p + "self_attn.o_proj.bias", {C}, attn.out.bias);
    b.rows_into(p + "post_attention_layernorm.weight", {C}, m.blocks[l].branches[1].norm.weight);
    b.linear_rows(p + "mlp.gate_proj.weight", {F, C}, mlp.up, 0);
    b.linear_rows(p + "mlp.up_proj.weight", {F, C}, mlp.up, F);
    b.linear_rows(p + "mlp.down_proj.weight", {C, F}, mlp.down);
    if (c.mlp_bias) {
      b.rows_into(p + "mlp.gate_proj.bias", {F}, mlp.up.bias, 0);
      b.rows_into(p + "mlp.up_proj.bias", {F}, mlp.up.bias, F);
      b.rows_into(p + "mlp.down_proj.bias", {C}, mlp.down.bias);
    }
  }
  b.rows_into("model.norm.weight", {C}, m.final_norm.weight);
  if (!c.tie_embeddings) b.linear_rows("lm_head.weight", {c.vocab_size, C}, m.lm_head);
  b.ignore_if([&](const std::string& n) { return ends_with(n, "rotary_emb.inv_freq") || (c.tie_embeddings && n == "lm_head.weight"); });
}

template <class T, class Binder>
void bind_norm(Binder& b, const std::string& p, std::int64_t C, Norm<T>& n) {
  b.rows_into(p + ".weight", {C}, n.weight);
  b.rows_into(p + ".bias", {C}, n.bias);
}

template <class T, class Binder>
void bind_gpt2(Binder& b, Decoder<T>& m, const std::string& p) {
  const ModelConfig& c = m.config;
  const std::int64_t C = c.d_model, F = c.d_ff;
  b.rows_into(p + "wte.weight", {c.vocab_size, C}, m.embed.weight);
  if (c.tie_embeddings) b.tied_head(p + "wte.weight", m);
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

template <class T, class Binder>
void bind_bert(Binder& b, Decoder<T>& m, SequenceClassifier<T>& classifier, const std::string& p) {
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
    if (classifier.empty()) {  // loading: allocate the head the checkpoint has
      classifier.pooler = Linear<T>(C, C, true);
      classifier.classifier = Linear<T>(C, labels, true);
    }
    b.rows_into(p + "pooler.dense.weight", {C, C}, classifier.pooler.weight);
    b.rows_into(p + "pooler.dense.bias", {C}, classifier.pooler.bias);
    b.rows_into("classifier.weight", {labels, C}, classifier.classifier.weight);
    b.rows_into("classifier.bias", {labels}, classifier.classifier.bias);
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

/// What load_model(dir) below does after reading the directory: `cfg` is its parsed config.json, `ck` its
/// open checkpoint, `source` its name in errors (config errors name source/config.json). The config
/// is validated and the size budget checked before anything is allocated.
/// How load_model stores what it loads.
struct LoadOptions {
  /// Storage of every Linear and of the LM head (as Decoder::compress_weights): f32; bf16 or f16,
  /// where the checkpoint's BF16 resp. F16 projection tensors are used in place (rows in the file's
  /// memory mapping, no conversion, no copy; tensors of other dtypes and GPT-2's transposed Conv1D
  /// weights are converted); q8 or q4, quantised on load. Anything but f32 needs T = float.
  WeightFormat weights = WeightFormat::f32;
};

template <class T>
Model<T> load_model(const json::Value& cfg, const Checkpoint& ck, const std::string& source, const ExtraTensors<T>& extra = {},
                    const LoadOptions& options = {}) {
  const std::string config_source = (std::filesystem::path(source) / "config.json").string();
  const ModelConfig config = config_from_json(cfg, config_source);
  io::check_model_size(model_size<T>(config), &ck, config_source);
  Model<T> model{Decoder<T>::create(config), {}};
  WeightBinder<T> b(ck, source);
  if (std::is_same_v<T, float> && (options.weights == WeightFormat::bf16 || options.weights == WeightFormat::f16)) b.keep_in_place(options.weights);
  const std::string& arch = model.decoder.config.architecture;
  if (arch == "gpt2") detail::bind_gpt2(b, model.decoder, ck.contains("transformer.wte.weight") ? "transformer." : "");
  else if (arch == "bert") detail::bind_bert(b, model.decoder, model.classifier, ck.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "");
  else detail::bind_llama(b, model.decoder);
  if (extra) extra(b, model);
  b.finish();
  model.decoder.compress_weights(options.weights);  // the Linears bound in place keep their rows
  return model;
}

/// Loads config.json and the safetensors weights (single file or sharded) of a Llama-family,
/// GPT-2 or BERT checkpoint directory. Weights in F32, F16 or BF16 are converted to T (or kept in
/// place, or quantised: LoadOptions::weights). A
/// checkpoint whose tensors do not match the config throws one Error that names every missing,
/// unexpected or mis-shaped tensor (or non-finite: every weight is checked). `extra` (optional)
/// binds tensors beyond the architecture's.
template <class T>
Model<T> load_model(const std::filesystem::path& dir, const ExtraTensors<T>& extra = {}, const LoadOptions& options = {}) {
  const json::Value cfg = read_json_file(dir / "config.json");
  return load_model<T>(cfg, Checkpoint::open(dir), dir.string(), extra, options);
}

/// load_model(dir).decoder; e.g. load_decoder<float>(dir, {.weights = WeightFormat::bf16}) keeps a
/// bf16 checkpoint's projections in its memory mapping.
template <class T>
Decoder<T> load_decoder(const std::filesystem::path& dir, const LoadOptions& options = {}) {
  return std::move(load_model<T>(dir, {}, options).decoder);
}

}  // namespace hf
ENGRAM_NAMESPACE_END
