// Reading a config.json object key by key, each value checked against its range as it is read, so
// an error names the file, the key, the value and what was expected.
#pragma once

#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

#include "engram/io/json.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace io {

/// Typed, range-checked access to the keys of one JSON object. A key that is absent or null takes
/// the fallback (when there is one); a present value of the wrong type or out of range throws
///   `<source>: "<prefix><key>" = <value>: expected <what>`
/// and a missing required key throws `<source>: missing required key "<key>" (<what>)`.
class ConfigReader {
 public:
  /// `source`: the file (or "config.json"); `prefix` names a nested object in messages (e.g. "rmt.").
  ConfigReader(const json::Value& object, std::string source, std::string prefix = "")
      : obj_(object), source_(std::move(source)), prefix_(std::move(prefix)) {
    check(obj_.is_object(), source_, prefix_.empty() ? std::string("expected a JSON object") : "\"" + prefix_.substr(0, prefix_.size() - 1) + "\" must be an object",
          ", got ", obj_.type_name());
  }

  const std::string& source() const { return source_; }
  /// True when `key` is present and not null.
  bool has(std::string_view key) const { return find(key) != nullptr; }

  /// An integer in [lo, hi]; required when `fallback` is empty.
  Index integer(std::string_view key, Index lo, Index hi, std::optional<Index> fallback = std::nullopt) const {
    const std::string what = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    const json::Value* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      missing(key, what);
    }
    if (!v->is_integer()) bad(key, *v, what);
    const std::int64_t i = v->as_integer();
    if (i < lo || i > hi) bad(key, *v, what);
    return Index(i);
  }

  /// A finite number in [lo, hi] (or (lo, hi] with `lo_open`); required when `fallback` is empty.
  double number(std::string_view key, double lo, double hi, std::optional<double> fallback = std::nullopt, bool lo_open = false) const {
    const std::string what = std::string("a number in ") + (lo_open ? "(" : "[") + format(lo) + ", " + format(hi) + "]";
    const json::Value* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      missing(key, what);
    }
    if (!v->is_number()) bad(key, *v, what);
    const double x = v->as_number();
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) bad(key, *v, what);
    return x;
  }

  bool boolean(std::string_view key, std::optional<bool> fallback = std::nullopt) const {
    const json::Value* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      missing(key, "true or false");
    }
    if (!v->is_bool()) bad(key, *v, "true or false");
    return v->as_bool();
  }

  /// A string; with `allowed`, one of those.
  std::string string(std::string_view key, std::optional<std::string> fallback = std::nullopt,
                     std::initializer_list<std::string_view> allowed = {}) const {
    std::string what = "a string";
    if (allowed.size()) {
      what = "one of";
      for (std::string_view a : allowed) what += std::string(" \"") + std::string(a) + "\"";
    }
    const json::Value* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      missing(key, what);
    }
    if (!v->is_string()) bad(key, *v, what);
    if (allowed.size()) {
      bool ok = false;
      for (std::string_view a : allowed) ok = ok || v->as_string() == a;
      if (!ok) bad(key, *v, what);
    }
    return v->as_string();
  }

  /// The nested object `key` (required), read with the same source and a longer prefix.
  ConfigReader object(std::string_view key) const {
    const json::Value* v = find(key);
    if (!v) missing(key, "an object");
    if (!v->is_object()) bad(key, *v, "an object");
    return ConfigReader(*v, source_, prefix_ + std::string(key) + ".");
  }
  /// The raw value of `key` (null when absent).
  const json::Value* find(std::string_view key) const {
    const json::Value* v = obj_.find(std::string(key));
    return (v && !v->is_null()) ? v : nullptr;
  }

  /// Throws the error of a value that is present but unacceptable.
  [[noreturn]] void bad(std::string_view key, const json::Value& v, std::string_view expected) const {
    std::string text = v.is_number() && !v.is_integer() ? format(v.as_number()) : json::dump(v);
    if (text.size() > 80) text = text.substr(0, 77) + "...";
    fail(source_, "\"", prefix_, key, "\" = ", text, ": expected ", expected);
  }
  /// Throws the error of a value that violates a rule between keys (e.g. "must divide hidden_size").
  [[noreturn]] void bad(std::string_view key, std::string_view rule) const {
    const json::Value* v = find(key);
    fail(source_, "\"", prefix_, key, "\" = ", v ? json::dump(*v) : std::string("(default)"), ": ", rule);
  }

 private:
  static std::string format(double x) {
    std::ostringstream out;
    out.precision(10);
    out << x;
    return out.str();
  }
  [[noreturn]] void missing(std::string_view key, std::string_view what) const {
    fail(source_, "missing required key \"", prefix_, key, "\" (", what, ")");
  }

  const json::Value& obj_;
  std::string source_, prefix_;
};

}  // namespace io
ENGRAM_NAMESPACE_END
