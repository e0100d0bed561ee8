// Writing a model in Hugging Face layout: config.json and model.safetensors with the tensor names
// hf::load_model reads (the same bind_* tables name every tensor in both directions), so a model
// trained here loads back in engram and in PyTorch.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engram/io/hf.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace hf {

/// The writing counterpart of WeightBinder: bind_* hand it each destination tensor with its HF
/// name and shape, and it copies the named rows (transposed for Conv1D) into a safetensors Writer.
template <class T>
class WeightExporter {
 public:
  WeightExporter(safetensors::Writer& out, const SequenceClassifier<T>& classifier, safetensors::DType dtype)
      : out_(out), classifier_(classifier), dtype_(dtype) {}

  bool has(const std::string& name) const { return name == "classifier.weight" && !classifier_.empty(); }
  std::vector<std::int64_t> shape_of(const std::string& name) const {
    check(has(name), "hf::WeightExporter", "no tensor \"", name, "\" to describe");
    return {classifier_.n_labels(), classifier_.pooler.in()};
  }
  void ignore_if(std::function<bool(const std::string&)>) {}

  /// Writes rows [row0, row0 + rows) of `src` as tensor `name` of `shape` (rank 1: the elements
  /// from row0 of a rank-1 tensor, or row row0 of a matrix; rank >= 2: rows = the product of all
  /// but the last dimension, as WeightBinder reads them), transposed when stored [in, out].
  void rows_into(const std::string& name, std::vector<std::int64_t> shape, const Tensor<T>& src, Index row0 = 0,
                 bool transpose = false) {
    Tensor<T> t;
    if (shape.size() == 1) {
      t = Tensor<T>({Index(shape[0])});
      const T* from = src.rank() == 1 ? src.data() + row0 : src.row(row0);
      std::copy_n(from, shape[0], t.data());
    } else {
      t = Tensor<T>(Shape::from_range(shape.begin(), shape.end()));
      for (Index r = 0; r < t.rows(); ++r)
        for (Index c = 0; c < t.cols(); ++c) t(r, c) = transpose ? src(row0 + c, r) : src(row0 + r, c);
    }
    out_.add(name, t, dtype_, shape);
  }
  void into(const std::string& name, std::vector<std::int64_t> shape, const Tensor<T>& src) { rows_into(name, std::move(shape), src); }
  /// A Linear's weight rows (WeightBinder::linear_rows' counterpart; export_weights refuses a
  /// compressed model before any is written).
  void linear_rows(const std::string& name, std::vector<std::int64_t> shape, const Linear<T>& src, Index row0 = 0, bool transpose = false) {
    rows_into(name, std::move(shape), src.weight, row0, transpose);
  }
  /// Nothing to write for a tied head (WeightBinder::tied_head's counterpart).
  void tied_head(const std::string&, const Decoder<T>&) {}

 private:
  safetensors::Writer& out_;
  const SequenceClassifier<T>& classifier_;
  safetensors::DType dtype_;
};

namespace detail {
inline const char* activation_name(Activation a, const std::string& architecture) {
  switch (a) {
    case Activation::silu: return "silu";
    case Activation::gelu_tanh: return architecture == "gpt2" ? "gelu_new" : "gelu_pytorch_tanh";
    case Activation::gelu_erf: return "gelu";
    case Activation::relu: return "relu";
  }
  return "silu";
}
}  // namespace detail

/// config.json of a model (the keys config_from_json reads, as Hugging Face writes them).
inline json::Value config_to_json(const ModelConfig& c, Index n_labels = 0) {
  json::Value j = json::Value::object();
  auto set_int = [&](const char* k, Index v) { j.set(k, json::Value(std::int64_t(v))); };
  j.set("model_type", c.architecture);
  set_int("vocab_size", c.vocab_size);
  if (c.architecture == "gpt2") {
    j.set("architectures", json::Value::array({json::Value(std::string("GPT2LMHeadModel"))}));
    set_int("n_embd", c.d_model);
    set_int("n_layer", c.n_layers);
    set_int("n_head", c.n_heads);
    set_int("n_positions", c.max_positions);
    set_int("n_inner", c.d_ff);
    j.set("layer_norm_epsilon", c.norm_eps);
    j.set("activation_function", std::string(detail::activation_name(c.activation, c.architecture)));
    j.set("tie_word_embeddings", c.tie_embeddings);
  } else if (c.architecture == "bert") {
    j.set("architectures", json::Value::array({json::Value(std::string(n_labels > 0 ? "BertForSequenceClassification" : "BertModel"))}));
    set_int("hidden_size", c.d_model);
    set_int("num_hidden_layers", c.n_layers);
    set_int("num_attention_heads", c.n_heads);
    set_int("intermediate_size", c.d_ff);
    set_int("max_position_embeddings", c.max_positions);
    set_int("type_vocab_size", c.type_vocab_size);
    j.set("layer_norm_eps", c.norm_eps);
    j.set("hidden_act", std::string(detail::activation_name(c.activation, c.architecture)));
    if (n_labels > 0) {
      json::Value id2label = json::Value::object();
      for (Index i = 0; i < n_labels; ++i) id2label.set(std::to_string(i), "LABEL_" + std::to_string(i));
      j.set("id2label", id2label);
    }
  } else {
    check(c.architecture == "llama" || c.architecture == "mistral" || c.architecture == "qwen2", "hf::config_to_json",
          "cannot write a config for architecture \"", c.architecture, "\" (llama, mistral, qwen2, gpt2, bert)");
    // A windowed Llama-style model is what Hugging Face calls Mistral (Llama ignores sliding_window).
    if (c.sliding_window > 0) j.set("model_type", std::string("mistral"));
    j.set("architectures", json::Value::array({json::Value(std::string(c.sliding_window > 0 ? "MistralForCausalLM" : "LlamaForCausalLM"))}));
    set_int("hidden_size", c.d_model);
    set_int("num_hidden_layers", c.n_layers);
    set_int("num_attention_heads", c.n_heads);
    set_int("num_key_value_heads", c.n_kv_heads);
    set_int("head_dim", c.head_dim);
    set_int("intermediate_size", c.d_ff);
    set_int("max_position_embeddings", c.max_positions);
    j.set("rms_norm_eps", c.norm_eps);
    j.set("rope_theta", c.rope_theta);
    j.set("hidden_act", std::string(detail::activation_name(c.activation, c.architecture)));
    j.set("tie_word_embeddings", c.tie_embeddings);
    j.set("attention_bias", c.qkv_bias);
    if (c.sliding_window > 0) j.set("sliding_window", json::Value(std::int64_t(c.sliding_window)));
    j.set("mlp_bias", c.mlp_bias);
    const RopeScaling& s = c.rope_scaling;
    if (s.kind == RopeScaling::Kind::none) {
      j.set("rope_scaling", json::Value());
    } else {
      json::Value r = json::Value::object();
      r.set("factor", s.factor);
      if (s.kind == RopeScaling::Kind::linear) r.set("rope_type", std::string("linear"));
      if (s.kind == RopeScaling::Kind::ntk) r.set("rope_type", std::string("ntk")), r.set("alpha", s.alpha);
      if (s.kind == RopeScaling::Kind::llama3) {
        r.set("rope_type", std::string("llama3"));
        r.set("low_freq_factor", s.low_freq_factor);
        r.set("high_freq_factor", s.high_freq_factor);
        r.set("original_max_position_embeddings", s.original_max_positions);
      }
      j.set("rope_scaling", r);
    }
  }
  return j;
}

/// The tensors of a decoder (and its classification head, if any) under their Hugging Face names.
template <class T>
safetensors::Writer export_weights(const Decoder<T>& decoder, const SequenceClassifier<T>* classifier = nullptr,
                                   safetensors::DType dtype = safetensors::DType::F32) {
  check(decoder.weight_format() == WeightFormat::f32, "hf::export_weights", "the weights are stored as ", format_name(decoder.weight_format()),
        " for inference; save the f32 model (before compress_weights) and convert on load");
  static const SequenceClassifier<T> none;
  const SequenceClassifier<T>& head = classifier ? *classifier : none;
  safetensors::Writer out;
  WeightExporter<T> e(out, head, dtype);
  // bind_* take mutable references (the loader writes through them); the exporter only reads.
  auto& m = const_cast<Decoder<T>&>(decoder);
  auto& h = const_cast<SequenceClassifier<T>&>(head);
  const std::string& arch = m.config.architecture;
  if (arch == "gpt2") detail::bind_gpt2(e, m, "transformer.");
  else if (arch == "bert") detail::bind_bert(e, m, h, head.empty() ? "" : "bert.");
  else detail::bind_llama(e, m);
  out.set_metadata("format", "pt");
  return out;
}

/// Writes `dir`/config.json and `dir`/model.safetensors (creating `dir`), loadable with
/// hf::load_model / load_decoder (and by Hugging Face transformers). Tensors are stored as `dtype`
/// (F32 by default; BF16 or F16 halve the file).
template <class T>
void save_decoder(const Decoder<T>& decoder, const std::filesystem::path& dir, const SequenceClassifier<T>* classifier = nullptr,
                  safetensors::DType dtype = safetensors::DType::F32) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  check(!ec, dir.string(), "cannot create the directory: ", ec.message());
  const Index labels = classifier && !classifier->empty() ? classifier->n_labels() : 0;
  const std::string config = json::dump(config_to_json(decoder.config, labels));
  const std::filesystem::path config_path = dir / "config.json";
  std::ofstream f(config_path, std::ios::trunc);
  check(bool(f), config_path.string(), "cannot open for writing");
  f << config << '\n';
  f.close();
  check(bool(f), config_path.string(), "write failed");
  export_weights(decoder, classifier, dtype).write((dir / "model.safetensors").string());
}

/// save_decoder of a loaded model and its head.
template <class T>
void save_model(const Model<T>& model, const std::filesystem::path& dir, safetensors::DType dtype = safetensors::DType::F32) {
  save_decoder(model.decoder, dir, &model.classifier, dtype);
}

}  // namespace hf
ENGRAM_NAMESPACE_END
