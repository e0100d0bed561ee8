// A checkpoint: one safetensors file, or a sharded set described by model.safetensors.index.json.
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engram/io/safetensors.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Reads the whole of a text file; throws Error naming the path.
inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  check(bool(f), path.string(), "cannot open file");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

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
    namespace fs = std::filesystem;
    Checkpoint c;
    if (fs::is_regular_file(path)) {
      c.add_file(path);
    } else if (fs::is_directory(path)) {
      const fs::path index = path / "model.safetensors.index.json";
      if (fs::exists(index)) {
        c.open_index(path, index);
      } else {
        check(fs::exists(path / "model.safetensors"), path.string(),
              "no model.safetensors or model.safetensors.index.json in this directory");
        c.add_file(path / "model.safetensors");
      }
    } else {
      fail(path.string(), "no such file or directory");
    }
    return c;
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
