// Writing an RMT checkpoint that rmt::load reads back: the backbone in Hugging Face layout
// (config.json + model.safetensors) with an "rmt" object in the config and the memory tensor
// (decoder layout) or the memory rows of the vocabulary (encoder layout, as the BERT experiments
// store their memory tokens).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "engram/io/hf_save.hpp"
#include "engram/rmt/loader.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// The "rmt" object of a config.json (the keys config_from_json reads).
inline json::Value config_to_json(const Config& c) {
  json::Value j = json::Value::object();
  auto set_int = [&](const char* k, Index v) { j.set(k, json::Value(std::int64_t(v))); };
  j.set("layout", std::string(name(c.layout)));
  set_int("num_mem_tokens", c.memory_tokens);
  set_int("segment_size", c.segment_size);
  j.set("memory_mask", std::string(name(c.memory_mask)));
  j.set("segment_alignment", std::string(name(c.alignment)));
  if (c.layout == Layout::encoder) {
    set_int("input_size", c.input_size);
    set_int("cls_token_id", c.cls_id);
    set_int("sep_token_id", c.sep_id);
    set_int("pad_token_id", c.pad_id);
  }
  return j;
}

namespace detail {
/// Writes `dir`/config.json: `config` (a JSON object) as one line.
inline void write_config(const std::filesystem::path& dir, const json::Value& config) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  check(!ec, dir.string(), "cannot create the directory: ", ec.message());
  const std::filesystem::path path = dir / "config.json";
  std::ofstream f(path, std::ios::trunc);
  check(bool(f), path.string(), "cannot open for writing");
  f << json::dump(config) << '\n';
  f.close();
  check(bool(f), path.string(), "write failed");
}

/// Copies every parameter of `saved` (read from `dir`) into `model`, in visiting order; throws Error
/// at the first name or shape that differs, or when the counts differ.
template <class T, class M>
void copy_parameters(M& saved, M& model, const std::filesystem::path& dir) {
  std::vector<std::pair<std::string, Tensor<T>*>> src;
  saved.visit_parameters([&](const std::string& n, Tensor<T>& t) { src.emplace_back(n, &t); });
  std::size_t i = 0;
  model.visit_parameters([&](const std::string& n, Tensor<T>& t) {
    check(i < src.size() && src[i].first == n && src[i].second->shape() == t.shape(), dir.string(),
          "checkpoint does not match the model at parameter \"", n, "\"");
    copy<T>(src[i].second->view(), t.view());
    ++i;
  });
  check(i == src.size(), dir.string(), "checkpoint has ", src.size(), " parameters, the model ", i);
}
}  // namespace detail

/// Writes `dir` (created if needed) so that rmt::load<T>(dir) returns the same model. Tensors are
/// stored as `dtype` (F32 by default; BF16 halves the file). The encoder layout's memory is stored
/// as the last memory_tokens rows of the word embeddings: save() first copies the memory into those
/// rows of the shared backbone (rows no computation reads: the memory slots' ids are overwritten).
template <class T>
void save(const RecurrentWrapper<T>& model, const std::filesystem::path& dir, safetensors::DType dtype = safetensors::DType::F32) {
  const MemoryCell<T>& cell = model.cell();
  const Config& c = cell.config();
  const Decoder<T>& bb = cell.backbone();
  if (c.layout == Layout::encoder && c.memory_tokens > 0) {
    Tensor<T>& table = const_cast<Tensor<T>&>(bb.embed.weight);
    copy(cell.initial_memory().view(), table.view().middle_rows(table.rows() - c.memory_tokens, c.memory_tokens));
  }
  const SequenceClassifier<T>* head = cell.classifier().empty() ? nullptr : &cell.classifier();
  json::Value config = hf::config_to_json(bb.config, head ? head->n_labels() : 0);
  config.set("rmt", config_to_json(c));
  detail::write_config(dir, config);
  safetensors::Writer w = hf::export_weights(bb, head, dtype);
  if (c.layout == Layout::decoder && c.memory_tokens > 0) w.add("memory", cell.initial_memory(), dtype);
  w.write((dir / "model.safetensors").string());
}

/// Copies every parameter of the checkpoint `dir` into `model` (same layout and shapes; throws
/// Error naming the first parameter that differs): how a trainer resumes or restores its best.
template <class T>
void load_parameters(RecurrentWrapper<T>& model, const std::filesystem::path& dir) {
  RecurrentWrapper<T> saved = load<T>(dir);
  detail::copy_parameters<T>(saved, model, dir);
  check(saved.config().layout == model.config().layout && saved.config().memory_tokens == model.config().memory_tokens &&
            saved.config().segment_size == model.config().segment_size,
        dir.string(), "checkpoint's RMT layout (", name(saved.config().layout), ", m = ", saved.config().memory_tokens, ", s = ",
        saved.config().segment_size, ") differs from the model's (", name(model.config().layout), ", m = ", model.config().memory_tokens,
        ", s = ", model.config().segment_size, ")");
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
