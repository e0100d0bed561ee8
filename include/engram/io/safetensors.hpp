// safetensors: a validating, memory-mapped reader (F32/F16/BF16/F64 and integer dtypes converted
// to the compute type) and a writer that follows the reference layout.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "engram/core/half.hpp"
#include "engram/core/tensor.hpp"
#include "engram/io/file.hpp"
#include "engram/io/json.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace safetensors {

/// Element types of the format. Only the ones engram converts are readable as tensors; the others
/// are accepted in a file (so the file validates) but reading them throws.
enum class DType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };

inline constexpr std::pair<std::string_view, DType> kDTypeNames[] = {
    {"BOOL", DType::BOOL}, {"U8", DType::U8},   {"I8", DType::I8},         {"I16", DType::I16},
    {"U16", DType::U16},   {"F16", DType::F16}, {"BF16", DType::BF16},     {"I32", DType::I32},
    {"U32", DType::U32},   {"F32", DType::F32}, {"F64", DType::F64},       {"I64", DType::I64},
    {"U64", DType::U64},   {"F8_E4M3", DType::F8_E4M3}, {"F8_E5M2", DType::F8_E5M2}};

inline std::string_view dtype_name(DType t) {
  for (const auto& [name, d] : kDTypeNames)
    if (d == t) return name;
  return "?";
}

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::BOOL: case DType::U8: case DType::I8: case DType::F8_E4M3: case DType::F8_E5M2: return 1;
    case DType::I16: case DType::U16: case DType::F16: case DType::BF16: return 2;
    case DType::I32: case DType::U32: case DType::F32: return 4;
    case DType::F64: case DType::I64: case DType::U64: return 8;
  }
  return 0;
}

// The scalar conversions live in core/half.hpp (the compressed weights use them too).
using engram::bf16_to_float;
using engram::float_to_bf16;
using engram::float_to_half;
using engram::half_to_float;

/// Where one tensor lives in the file.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // relative to the data buffer
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

namespace detail {
// Read-only bytes of a file: memory-mapped, or owned when built from memory.
class Bytes {
 public:
  static std::shared_ptr<Bytes> map_file(const std::string& path) {
    auto b = std::make_shared<Bytes>();
    const io::ReadFile file(path, "safetensors file");  // regular files only: a FIFO or a device never blocks here
    b->size_ = file.size();
    if (b->size_ > 0) {
      void* p = ::mmap(nullptr, b->size_, PROT_READ, MAP_PRIVATE, file.fd(), 0);
      check(p != MAP_FAILED, path, "mmap failed: ", std::strerror(errno));
      b->data_ = static_cast<const unsigned char*>(p);
      b->mapped_ = true;
    }
    return b;
  }
  static std::shared_ptr<Bytes> copy_of(std::span<const unsigned char> bytes) {
    auto b = std::make_shared<Bytes>();
    b->owned_.assign(bytes.begin(), bytes.end());
    b->data_ = b->owned_.data();
    b->size_ = b->owned_.size();
    return b;
  }
  ~Bytes() {
    if (mapped_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  const unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::vector<unsigned char> owned_;
};

// Little-endian load of a trivially copyable scalar from possibly unaligned bytes.
template <class T>
T load_le(const unsigned char* p) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, p, sizeof(T));
  if constexpr (std::endian::native == std::endian::big) std::reverse(b, b + sizeof(T));
  T v;
  std::memcpy(&v, b, sizeof(T));
  return v;
}
}  // namespace detail

/// A validated safetensors file. Opening checks every rule of the format: header length within the
/// file and at most 100 MB, a JSON object header, known dtypes, non-negative shapes whose byte size
/// does not overflow and equals the offsets span, tensors tiling the buffer from 0 with no hole or
/// overlap, the buffer ending exactly at end of file, string-valued __metadata__. Any violation
/// throws Error naming the file; nothing is ever read out of bounds.
class File {
 public:
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

  static File open(const std::string& path) { return File(detail::Bytes::map_file(path), path); }
  static File from_bytes(std::span<const unsigned char> bytes, std::string name = "<memory>") {
    return File(detail::Bytes::copy_of(bytes), std::move(name));
  }

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(std::string_view name) const { return index_.count(std::string(name)) > 0; }
  const TensorInfo& info(std::string_view name) const {
    auto it = index_.find(std::string(name));
    check(it != index_.end(), path_, "no tensor named \"", name, "\"");
    return tensors_[it->second];
  }
  /// Raw bytes of a tensor.
  std::span<const unsigned char> bytes(const TensorInfo& t) const {
    return {bytes_->data() + data_start_ + t.begin, std::size_t(t.end - t.begin)};
  }
  /// What keeps bytes() alive (the file's mapping): hold it to use a tensor's bytes in place.
  std::shared_ptr<const void> owner() const { return bytes_; }

  /// Reads a tensor converted to T (float types: from F32, F16, BF16, F64; integer T: from any integer
  /// dtype or BOOL). The tensor keeps its shape (rank <= 4); a rank-0 tensor has one element.
  template <class T>
  Tensor<T> read(std::string_view name) const {
    const TensorInfo& t = info(name);
    check(t.shape.size() <= std::size_t(Shape::kMaxRank), path_, "tensor \"", name, "\" has rank ", t.shape.size(),
          ", engram tensors hold at most ", Shape::kMaxRank);
    Tensor<T> out(Shape::from_range(t.shape.begin(), t.shape.end()));
    convert_into<T>(t, out);
    return out;
  }

 private:
  File(std::shared_ptr<detail::Bytes> bytes, std::string path) : bytes_(std::move(bytes)), path_(std::move(path)) { parse(); }

  [[noreturn]] void bad(const auto&... parts) const { fail(path_, "malformed safetensors file: ", parts...); }

  void parse() {
    const std::size_t size = bytes_->size();
    if (size < 8) bad("file of ", size, " bytes is shorter than the 8-byte header length");
    const std::uint64_t n = detail::load_le<std::uint64_t>(bytes_->data());
    if (n > kMaxHeaderBytes) bad("header length ", n, " exceeds the ", kMaxHeaderBytes, "-byte limit");
    if (n > size - 8) bad("header length ", n, " runs past the end of the ", size, "-byte file");
    if (n < 2 || bytes_->data()[8] != '{') bad("header does not start with '{'");
    data_start_ = 8 + n;
    const std::string_view text(reinterpret_cast<const char*>(bytes_->data()) + 8, std::size_t(n));
    const json::Value header = json::parse(text, path_ + " header");
    if (!header.is_object()) bad("header is ", header.type_name(), ", expected an object");
    const std::uint64_t buffer = size - data_start_;
    for (const auto& [name, entry] : header.as_object()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) bad("__metadata__ is not an object");
        for (const auto& [k, v] : entry.as_object()) {
          if (!v.is_string()) bad("__metadata__ value of \"", k, "\" is not a string");
          metadata_[k] = v.as_string();
        }
        continue;
      }
      tensors_.push_back(parse_entry(name, entry, buffer));
    }
    // Offsets must tile [0, buffer) exactly.
    std::vector<std::size_t> order(tensors_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return std::pair(tensors_[a].begin, tensors_[a].end) < std::pair(tensors_[b].begin, tensors_[b].end);
    });
    std::uint64_t expected = 0;
    for (std::size_t i : order) {
      const TensorInfo& t = tensors_[i];
      if (t.begin != expected)
        bad("tensor \"", t.name, "\" starts at byte ", t.begin, " of the data buffer, expected ", expected,
            t.begin > expected ? " (a hole)" : " (overlap)");
      expected = t.end;
    }
    if (expected != buffer) bad("tensors cover ", expected, " bytes but the data buffer has ", buffer, " (incomplete or trailing data)");
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  }

  TensorInfo parse_entry(const std::string& name, const json::Value& entry, std::uint64_t buffer) const {
    if (!entry.is_object()) bad("entry \"", name, "\" is ", entry.type_name(), ", expected an object");
    TensorInfo t;
    t.name = name;
    const json::Value* dtype = entry.find("dtype");
    const json::Value* shape = entry.find("shape");
    const json::Value* offsets = entry.find("data_offsets");
    if (!dtype || !dtype->is_string()) bad("tensor \"", name, "\" has no string dtype");
    if (!shape || !shape->is_array()) bad("tensor \"", name, "\" has no shape array");
    if (!offsets || !offsets->is_array() || offsets->as_array().size() != 2) bad("tensor \"", name, "\" needs data_offsets [begin, end]");
    bool known = false;
    for (const auto& [dn, d] : kDTypeNames)
      if (dn == dtype->as_string()) t.dtype = d, known = true;
    if (!known) bad("tensor \"", name, "\" has unknown dtype \"", dtype->as_string(), "\"");
    std::uint64_t numel = 1;
    for (const json::Value& d : shape->as_array()) {
      if (!d.is_integer() || d.as_integer() < 0) bad("tensor \"", name, "\" has a shape entry that is not a non-negative integer");
      t.shape.push_back(d.as_integer());
      if (__builtin_mul_overflow(numel, std::uint64_t(d.as_integer()), &numel))
        bad("tensor \"", name, "\" has a shape whose element count overflows");
    }
    std::uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, std::uint64_t(dtype_size(t.dtype)), &nbytes))
      bad("tensor \"", name, "\" has a shape whose byte count overflows");
    for (const json::Value& o : offsets->as_array())
      if (!o.is_integer() || o.as_integer() < 0) bad("tensor \"", name, "\" has a data offset that is not a non-negative integer");
    t.begin = std::uint64_t(offsets->as_array()[0].as_integer());
    t.end = std::uint64_t(offsets->as_array()[1].as_integer());
    if (t.end < t.begin) bad("tensor \"", name, "\" ends (", t.end, ") before it begins (", t.begin, ")");
    if (t.end > buffer) bad("tensor \"", name, "\" ends at byte ", t.end, " past the ", buffer, "-byte data buffer");
    if (t.end - t.begin != nbytes)
      bad("tensor \"", name, "\" spans ", t.end - t.begin, " bytes but its shape and dtype need ", nbytes);
    return t;
  }

  template <class T>
  void convert_into(const TensorInfo& t, Tensor<T>& out) const {
    const unsigned char* src = bytes_->data() + data_start_ + t.begin;
    const Index cols = out.cols(), rows = out.rows();
    if (out.numel() == 0) return;
    auto each = [&](auto decode) {
      const std::size_t es = dtype_size(t.dtype);
      for (Index r = 0; r < rows; ++r) {
        T* dst = out.row(r);
        for (Index c = 0; c < cols; ++c) dst[c] = decode(src + (std::size_t(r * cols + c)) * es);
      }
    };
    if constexpr (std::is_floating_point_v<T>) {
      switch (t.dtype) {
        case DType::F32: return each([](const unsigned char* p) { return T(detail::load_le<float>(p)); });
        case DType::F64: return each([](const unsigned char* p) { return T(detail::load_le<double>(p)); });
        case DType::F16: return each([](const unsigned char* p) { return T(half_to_float(detail::load_le<std::uint16_t>(p))); });
        case DType::BF16: return each([](const unsigned char* p) { return T(bf16_to_float(detail::load_le<std::uint16_t>(p))); });
        default: break;
      }
    } else {
      switch (t.dtype) {
        case DType::I64: return each([](const unsigned char* p) { return T(detail::load_le<std::int64_t>(p)); });
        case DType::I32: return each([](const unsigned char* p) { return T(detail::load_le<std::int32_t>(p)); });
        case DType::U32: return each([](const unsigned char* p) { return T(detail::load_le<std::uint32_t>(p)); });
        case DType::I16: return each([](const unsigned char* p) { return T(detail::load_le<std::int16_t>(p)); });
        case DType::U16: return each([](const unsigned char* p) { return T(detail::load_le<std::uint16_t>(p)); });
        case DType::I8: return each([](const unsigned char* p) { return T(std::int8_t(*p)); });
        case DType::U8: case DType::BOOL: return each([](const unsigned char* p) { return T(*p); });
        default: break;
      }
    }
    fail(path_, "tensor \"", t.name, "\" has dtype ", dtype_name(t.dtype), ", which cannot be read as ",
         std::is_floating_point_v<T> ? "floating point" : "integers");
  }

  std::shared_ptr<detail::Bytes> bytes_;
  std::string path_;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file: tensors are laid out larger-dtype first then by name (so each starts
/// aligned to its element size) and the header is padded with spaces to a multiple of 8 bytes.
class Writer {
 public:
  /// Adds a floating-point tensor, stored as F32 (default), F16, BF16 or F64. `shape` defaults to
  /// the tensor's own.
  template <class T>
  void add(std::string name, const Tensor<T>& t, DType dtype = DType::F32, std::vector<std::int64_t> shape = {}) {
    static_assert(std::is_arithmetic_v<T>);
    if (shape.empty() && t.rank() > 0)
      for (int i = 0; i < t.rank(); ++i) shape.push_back(t.dim(i));
    std::int64_t numel = 1;
    for (auto d : shape) numel *= d;
    check(numel == t.numel(), "safetensors::Writer", "shape of \"", name, "\" has ", numel, " elements, the tensor ", t.numel());
    Entry e{std::move(name), dtype, std::move(shape), {}};
    e.data.resize(std::size_t(numel) * dtype_size(dtype));
    std::size_t i = 0;
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c, ++i) encode(dtype, t.row(r)[c], e.data.data() + i * dtype_size(dtype));
    add_entry(std::move(e));
  }

  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  /// The file contents.
  std::vector<unsigned char> bytes() const {
    std::vector<const Entry*> order;
    for (const auto& [_, e] : entries_) order.push_back(&e);
    std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
      if (dtype_size(a->dtype) != dtype_size(b->dtype)) return dtype_size(a->dtype) > dtype_size(b->dtype);
      return a->name < b->name;
    });
    json::Value header = json::Value::object();
    if (!metadata_.empty()) {
      json::Value meta = json::Value::object();
      for (const auto& [k, v] : metadata_) meta.set(k, v);
      header.set("__metadata__", meta);
    }
    std::uint64_t offset = 0;
    for (const Entry* e : order) {
      json::Value info = json::Value::object();
      info.set("dtype", std::string(dtype_name(e->dtype)));
      json::Value shape = json::Value::array();
      for (auto d : e->shape) shape.mutable_array().push_back(json::Value(std::int64_t(d)));
      info.set("shape", shape);
      json::Value offs = json::Value::array({json::Value(std::int64_t(offset)), json::Value(std::int64_t(offset + e->data.size()))});
      info.set("data_offsets", offs);
      header.set(e->name, info);
      offset += e->data.size();
    }
    std::string text = json::dump(header);
    while (text.size() % 8 != 0) text += ' ';
    std::vector<unsigned char> out(8 + text.size() + std::size_t(offset));
    const std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) out[std::size_t(i)] = static_cast<unsigned char>(n >> (8 * i));
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::size_t at = 8 + text.size();
    for (const Entry* e : order) {
      if (!e->data.empty()) std::memcpy(out.data() + at, e->data.data(), e->data.size());
      at += e->data.size();
    }
    return out;
  }

  void write(const std::string& path) const {
    const auto b = bytes();
    const io::PathKind kind = io::path_kind(path);  // never open a FIFO or a device for writing: it could block
    check(kind.error.empty(), path, "cannot write here: ", kind.error);
    check(!kind.exists() || kind.regular(), path, "is ", io::type_name(kind.type), ", expected a regular file to write");
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    check(bool(f), path, "cannot open for writing");
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    check(bool(f), path, "write failed");
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> data;
  };
  void add_entry(Entry e) {
    check(e.name != "__metadata__" && !e.name.empty(), "safetensors::Writer", "invalid tensor name \"", e.name, "\"");
    check(entries_.count(e.name) == 0, "safetensors::Writer", "duplicate tensor \"", e.name, "\"");
    entries_.emplace(e.name, std::move(e));
  }
  template <class T>
  static void encode(DType d, T x, unsigned char* p) {
    auto put = [p](auto v) { std::memcpy(p, &v, sizeof v); };
    switch (d) {
      case DType::F32: return put(float(x));
      case DType::F64: return put(double(x));
      case DType::F16: return put(float_to_half(float(x)));
      case DType::BF16: return put(float_to_bf16(float(x)));
      case DType::I64: return put(std::int64_t(x));
      case DType::I32: return put(std::int32_t(x));
      case DType::U8: case DType::BOOL: return put(std::uint8_t(x));
      default: fail("safetensors::Writer", "cannot encode dtype ", dtype_name(d));
    }
  }
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace safetensors
ENGRAM_NAMESPACE_END
