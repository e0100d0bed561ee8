// A checkpoint: one safetensors file, or a sharded set described by model.safetensors.index.json.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <map>
#include <string>
#include <vector>

#include "engram/io/file.hpp"
#include "engram/io/safetensors.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Reads the whole of a text file; throws Error naming the path (also for anything that is not a
/// regular file: a FIFO, a device or a directory is refused before it is opened).
inline std::string read_text_file(const std::filesystem::path& path) { return io::ReadFile(path).read_all(); }

/// Parses a JSON file.
inline json::Value read_json_file(const std::filesystem::path& path) {
  return json::parse(read_text_file(path), path.string());
}

/// Tensors by name across the files of a checkpoint.
class Checkpoint {
 public:
  /// `path` is a .safetensors file, or a directory holding model.safetensors or a sharded
  /// model.safetensors.index.json with its shards.
  static Checkpoint open(const std::filesystem::path& path) {
    Checkpoint c;
    const io::PathKind kind = io::path_kind(path);
    check(kind.error.empty(), path.string(), "cannot use this checkpoint path: ", kind.error);
    if (kind.regular()) {
      c.add_file(path);
    } else if (kind.directory()) {
      const std::filesystem::path index = path / "model.safetensors.index.json";
      const io::PathKind index_kind = io::path_kind(index);
      if (index_kind.exists() || !index_kind.error.empty()) {
        c.open_index(path, index);
      } else {
        const io::PathKind single = io::path_kind(path / "model.safetensors");
        check(single.exists() || !single.error.empty(), path.string(),
              "no model.safetensors or model.safetensors.index.json in this directory");
        c.add_file(path / "model.safetensors");  // checks that it is a regular file
      }
    } else {
      check(kind.exists(), path.string(), "no such file or directory");
      fail(path.string(), "the checkpoint is ", io::type_name(kind.type), ", expected a .safetensors file or a directory");
    }
    return c;
  }

  /// Elements over every tensor of the checkpoint (what a model built from a matching config can at most need).
  std::uint64_t total_elements() const {
    std::uint64_t n = 0;
    for (const auto& f : files_)
      for (const auto& t : f.tensors()) n += std::uint64_t(t.numel());
    return n;
  }

  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  /// Names of every tensor, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [k, _] : where_) n.push_back(k);
    return n;
  }
  const safetensors::TensorInfo& info(const std::string& name) const { return file_of(name).info(name); }
  std::vector<std::int64_t> shape(const std::string& name) const { return info(name).shape; }
  template <class T>
  Tensor<T> read(const std::string& name) const {
    return file_of(name).template read<T>(name);
  }
  const std::vector<safetensors::File>& files() const { return files_; }
  /// Tensor `name`'s stored bytes (little-endian, in its dtype) in its shard's mapping, and what
  /// keeps them alive.
  std::pair<std::span<const unsigned char>, std::shared_ptr<const void>> raw(const std::string& name) const {
    const safetensors::File& f = file_of(name);
    return {f.bytes(f.info(name)), f.owner()};
  }

 private:
  const safetensors::File& file_of(const std::string& name) const {
    auto it = where_.find(name);
    check(it != where_.end(), "checkpoint", "no tensor named \"", name, "\"");
    return files_[it->second];
  }
  void add_file(const std::filesystem::path& p) {
    files_.push_back(safetensors::File::open(p.string()));
    for (const auto& t : files_.back().tensors()) {
      check(where_.count(t.name) == 0, p.string(), "tensor \"", t.name, "\" also appears in another shard");
      where_[t.name] = files_.size() - 1;
    }
  }
  void open_index(const std::filesystem::path& dir, const std::filesystem::path& index) {
    const json::Value doc = read_json_file(index);
    check(doc.is_object() && doc.contains("weight_map"), index.string(), "expected an object with a \"weight_map\"");
    std::map<std::string, std::string> weight_map;
    std::vector<std::string> shard_order;
    for (const auto& [name, file] : doc.at("weight_map").as_object("weight_map")) {
      const std::string& f = file.as_string("weight_map entry");
      check(f.find('/') == std::string::npos && f.find("..") == std::string::npos, index.string(),
            "shard name \"", f, "\" must be a plain file name");
      weight_map[name] = f;
      if (std::find(shard_order.begin(), shard_order.end(), f) == shard_order.end()) shard_order.push_back(f);
    }
    for (const auto& f : shard_order) add_file(dir / f);
    for (const auto& [name, f] : weight_map) {
      auto it = where_.find(name);
      check(it != where_.end(), index.string(), "tensor \"", name, "\" is listed for ", f, " but no shard holds it");
      check(std::filesystem::path(files_[it->second].path()).filename() == f, index.string(), "tensor \"", name,
            "\" is listed for ", f, " but found in ", files_[it->second].path());
    }
  }

  std::vector<safetensors::File> files_;
  std::map<std::string, std::size_t> where_;
};

ENGRAM_NAMESPACE_END
