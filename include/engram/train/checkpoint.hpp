// Training checkpoints: the model in its loadable format (config.json + model.safetensors), the
// optimizer state (optimizer.safetensors) and the loop's own state (trainer.json: step, seed,
// options), written to a temporary directory and renamed, so a crash mid-write leaves the last
// good checkpoint intact.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "engram/io/checkpoint.hpp"
#include "engram/io/hf_save.hpp"
#include "engram/train/optimizer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// How a trainer writes and reads the model it trains (Hugging Face layout by default; TTT and
/// RMT models bring their own).
template <class T>
struct ModelIO {
  std::function<void(const Decoder<T>&, const std::filesystem::path&)> save = [](const Decoder<T>& m, const std::filesystem::path& d) {
    hf::save_decoder<T>(m, d);
  };
  std::function<Decoder<T>(const std::filesystem::path&)> load = [](const std::filesystem::path& d) { return hf::load_decoder<T>(d); };
};

/// Copies every parameter of `from` into `into` (same architecture: names and shapes must agree).
template <class T>
void copy_parameters(Decoder<T>& from, Decoder<T>& into, const std::string& source) {
  std::vector<std::pair<std::string, Tensor<T>*>> src;
  from.visit_parameters([&](const std::string& n, Tensor<T>& t) { src.emplace_back(n, &t); });
  std::size_t i = 0;
  into.visit_parameters([&](const std::string& n, Tensor<T>& t) {
    check(i < src.size() && src[i].first == n && src[i].second->shape() == t.shape(), source,
          "checkpoint does not match the model being trained at parameter \"", n, "\"");
    for (Index r = 0; r < t.rows(); ++r) std::copy_n(src[i].second->row(r), t.cols(), t.row(r));
    ++i;
  });
  check(i == src.size(), source, "checkpoint has ", src.size(), " parameters, the model ", i);
}

/// Writes the checkpoint `dir` (replacing it atomically): model, optimizer state and `state`
/// (trainer.json, which must be a JSON object; "step" is set).
template <class T>
void save_checkpoint(const std::filesystem::path& dir, const ModelIO<T>& io, const Decoder<T>& model, const AdamW<T>& optimizer,
                     json::Value state) {
  namespace fs = std::filesystem;
  const fs::path tmp = dir.string() + ".tmp", old = dir.string() + ".old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  io.save(model, tmp);
  optimizer.save(tmp / "optimizer.safetensors");
  state.set("step", json::Value(std::int64_t(optimizer.step_count())));
  {
    std::ofstream f(tmp / "trainer.json", std::ios::trunc);
    f << json::dump(state) << '\n';
    f.close();
    check(bool(f), (tmp / "trainer.json").string(), "write failed");
  }
  // Swap in: dir -> dir.old, tmp -> dir, drop dir.old. A crash leaves dir or dir.old complete.
  fs::remove_all(old, ec);
  if (fs::exists(dir)) {
    fs::rename(dir, old, ec);
    check(!ec, dir.string(), "cannot move the previous checkpoint aside: ", ec.message());
  }
  fs::rename(tmp, dir, ec);
  check(!ec, dir.string(), "cannot move the new checkpoint in place: ", ec.message());
  fs::remove_all(old, ec);
}

/// The checkpoint directory to resume from: `dir`, or the complete `dir`.old a crash left behind.
inline std::filesystem::path resumable_checkpoint(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  if (fs::exists(dir / "trainer.json")) return dir;
  const fs::path old = dir.string() + ".old";
  if (fs::exists(old / "trainer.json")) return old;
  return {};
}

/// Restores model weights and optimizer state from checkpoint `dir`; returns its trainer.json.
template <class T>
json::Value load_checkpoint(const std::filesystem::path& dir, const ModelIO<T>& io, Decoder<T>& model, AdamW<T>& optimizer) {
  Decoder<T> saved = io.load(dir);
  copy_parameters(saved, model, dir.string());
  optimizer.load(dir / "optimizer.safetensors");
  json::Value state = read_json_file(dir / "trainer.json");
  check(state.is_object() && state.contains("step"), (dir / "trainer.json").string(), "expected an object with a \"step\"");
  check(state.at("step").as_integer("step") == optimizer.step_count(), (dir / "trainer.json").string(), "step ",
        state.at("step").as_integer("step"), " disagrees with the optimizer state's step ", optimizer.step_count());
  return state;
}

}  // namespace train
ENGRAM_NAMESPACE_END
