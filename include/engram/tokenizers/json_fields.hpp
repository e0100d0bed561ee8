// Reading tokenizer.json components: typed access to optional fields with errors that name the
// component and field, on top of the strict io/json.hpp parser.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "engram/io/json.hpp"
#include "engram/tokenizers/utf8.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers::detail {

/// The "type" of a component object; `where` names it in errors ("pre_tokenizer", ...).
inline const std::string& type_of(const json::Value& v, std::string_view where) {
  check(v.is_object(), "tokenizer.json", where, " expected an object, got ", v.type_name());
  const json::Value* t = v.find("type");
  check(t != nullptr && t->is_string(), "tokenizer.json", where, ": missing string field \"type\"");
  return t->as_string();
}

inline bool get_bool(const json::Value& v, std::string_view key, bool fallback, std::string_view where) {
  const json::Value* f = v.find(key);
  if (f == nullptr || f->is_null()) return fallback;
  check(f->is_bool(), "tokenizer.json", where, ".", key, " expected a boolean, got ", f->type_name());
  return f->as_bool();
}

inline std::optional<bool> get_optional_bool(const json::Value& v, std::string_view key, std::string_view where) {
  const json::Value* f = v.find(key);
  if (f == nullptr || f->is_null()) return std::nullopt;
  check(f->is_bool(), "tokenizer.json", where, ".", key, " expected a boolean or null, got ", f->type_name());
  return f->as_bool();
}

inline std::int64_t get_int(const json::Value& v, std::string_view key, std::int64_t fallback, std::string_view where) {
  const json::Value* f = v.find(key);
  if (f == nullptr || f->is_null()) return fallback;
  check(f->is_integer(), "tokenizer.json", where, ".", key, " expected an integer, got ", f->type_name());
  return f->as_integer();
}

inline std::optional<std::string> get_optional_string(const json::Value& v, std::string_view key, std::string_view where) {
  const json::Value* f = v.find(key);
  if (f == nullptr || f->is_null()) return std::nullopt;
  check(f->is_string(), "tokenizer.json", where, ".", key, " expected a string, got ", f->type_name());
  return f->as_string();
}

inline std::string get_string(const json::Value& v, std::string_view key, std::string_view fallback, std::string_view where) {
  return get_optional_string(v, key, where).value_or(std::string(fallback));
}

inline const std::string& require_string(const json::Value& v, std::string_view key, std::string_view where) {
  const json::Value* f = v.find(key);
  check(f != nullptr && f->is_string(), "tokenizer.json", where, ": missing string field \"", key, "\"");
  return f->as_string();
}

inline const json::Value& require(const json::Value& v, std::string_view key, std::string_view where) {
  const json::Value* f = v.find(key);
  check(f != nullptr && !f->is_null(), "tokenizer.json", where, ": missing field \"", key, "\"");
  return *f;
}

/// A Split/Replace pattern: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  std::string text;
  bool regex = false;
};
inline Pattern get_pattern(const json::Value& v, std::string_view where) {
  const json::Value& p = require(v, "pattern", where);
  if (const json::Value* s = p.find("String"); s && s->is_string()) return {s->as_string(), false};
  if (const json::Value* r = p.find("Regex"); r && r->is_string()) return {r->as_string(), true};
  fail("tokenizer.json", where, ".pattern expected {\"String\": ...} or {\"Regex\": ...}");
}

/// The single code point of a string field (Metaspace's replacement, Strip's content).
inline char32_t get_char(const json::Value& v, std::string_view key, char32_t fallback, std::string_view where) {
  const auto s = get_optional_string(v, key, where);
  if (!s) return fallback;
  check(!s->empty(), "tokenizer.json", where, ".", key, " must be one character, got an empty string");
  const utf8::Decoded d = utf8::decode(*s, 0);
  check(d.valid && std::size_t(d.length) == s->size(), "tokenizer.json", where, ".", key, " must be one character, got \"", *s, "\"");
  return d.cp;
}
}  // namespace tokenizers::detail
ENGRAM_NAMESPACE_END
