// A small strict JSON reader and writer (RFC 8259) for safetensors headers and HF config files.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "engram/core/config.hpp"
#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace json {

/// A JSON value. Objects keep their members in file order and reject duplicate keys.
class Value {
 public:
  enum class Type { null, boolean, number, string, array, object };
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : type_(Type::boolean), bool_(b) {}
  Value(double d) : type_(Type::number), number_(d), is_integer_(false) {}
  Value(std::int64_t i) : type_(Type::number), number_(double(i)), integer_(i), is_integer_(true) {}
  Value(int i) : Value(std::int64_t(i)) {}
  Value(std::string s) : type_(Type::string), string_(std::move(s)) {}
  Value(const char* s) : Value(std::string(s)) {}
  static Value array(Array a = {}) {
    Value v;
    v.type_ = Type::array;
    v.array_ = std::make_shared<Array>(std::move(a));
    return v;
  }
  static Value object(Object o = {}) {
    Value v;
    v.type_ = Type::object;
    v.object_ = std::make_shared<Object>(std::move(o));
    return v;
  }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_bool() const { return type_ == Type::boolean; }
  bool is_number() const { return type_ == Type::number; }
  /// A number written without fraction or exponent that fits in int64.
  bool is_integer() const { return type_ == Type::number && is_integer_; }
  bool is_string() const { return type_ == Type::string; }
  bool is_array() const { return type_ == Type::array; }
  bool is_object() const { return type_ == Type::object; }

  bool as_bool(std::string_view what = "value") const {
    check(is_bool(), "json", what, " expected a boolean, got ", type_name());
    return bool_;
  }
  double as_number(std::string_view what = "value") const {
    check(is_number(), "json", what, " expected a number, got ", type_name());
    return number_;
  }
  std::int64_t as_integer(std::string_view what = "value") const {
    check(is_integer(), "json", what, " expected an integer, got ", is_number() ? "a non-integer number" : type_name());
    return integer_;
  }
  const std::string& as_string(std::string_view what = "value") const {
    check(is_string(), "json", what, " expected a string, got ", type_name());
    return string_;
  }
  const Array& as_array(std::string_view what = "value") const {
    check(is_array(), "json", what, " expected an array, got ", type_name());
    return *array_;
  }
  const Object& as_object(std::string_view what = "value") const {
    check(is_object(), "json", what, " expected an object, got ", type_name());
    return *object_;
  }
  Array& mutable_array() {
    check(is_array(), "json", "expected an array, got ", type_name());
    return *array_;
  }
  Object& mutable_object() {
    check(is_object(), "json", "expected an object, got ", type_name());
    return *object_;
  }

  /// Member of an object, or nullptr.
  const Value* find(std::string_view key) const {
    if (!is_object()) return nullptr;
    for (const auto& [k, v] : *object_)
      if (k == key) return &v;
    return nullptr;
  }
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  /// Member of an object; throws Error naming the key when absent.
  const Value& at(std::string_view key) const {
    const Value* v = find(key);
    check(v != nullptr, "json", "missing key \"", key, "\"");
    return *v;
  }
  void set(std::string key, Value v) {
    auto& obj = mutable_object();
    for (auto& [k, old] : obj)
      if (k == key) {
        old = std::move(v);
        return;
      }
    obj.emplace_back(std::move(key), std::move(v));
  }

  const char* type_name() const {
    switch (type_) {
      case Type::null: return "null";
      case Type::boolean: return "a boolean";
      case Type::number: return "a number";
      case Type::string: return "a string";
      case Type::array: return "an array";
      case Type::object: return "an object";
    }
    return "?";
  }

 private:
  friend class Parser;
  Type type_ = Type::null;
  bool bool_ = false;
  double number_ = 0;
  std::int64_t integer_ = 0;
  bool is_integer_ = false;
  std::string string_;
  std::shared_ptr<Array> array_;
  std::shared_ptr<Object> object_;
};

/// Recursive-descent parser. Every read is bounds-checked; nesting is limited so hostile input
/// cannot exhaust the stack; errors give the byte offset.
class Parser {
 public:
  static constexpr int kMaxDepth = 128;

  Parser(std::string_view text, std::string_view source) : text_(text), source_(source) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (pos_ != text_.size()) error("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void error(std::string_view what) const {
    fail(source_, "invalid JSON at byte ", pos_, ": ", what);
  }
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }
  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++pos_;
  }
  void skip_ws() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) ++pos_;
  }
  void expect_word(std::string_view w) {
    if (text_.substr(pos_, w.size()) != w) error("invalid literal");
    pos_ += w.size();
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than 128 levels");
    switch (peek()) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Value(parse_string());
      case 't': expect_word("true"); return Value(true);
      case 'f': expect_word("false"); return Value(false);
      case 'n': expect_word("null"); return Value();
      default: return parse_number();
    }
  }

  Value parse_object(int depth) {
    expect('{');
    Value v = Value::object();
    auto& obj = *v.object_;
    std::unordered_set<std::string> seen;  // a hash set: hostile headers with many keys stay linear
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    while (true) {
      skip_ws();
      if (peek() != '"') error("expected a string key");
      std::string key = parse_string();
      if (!seen.insert(key).second) error("duplicate key \"" + key + "\"");
      skip_ws();
      expect(':');
      skip_ws();
      obj.emplace_back(std::move(key), parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      return v;
    }
  }

  Value parse_array(int depth) {
    expect('[');
    Value v = Value::array();
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    while (true) {
      skip_ws();
      v.array_->push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']');
      return v;
    }
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > text_.size()) error("truncated \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      code <<= 4;
      if (c >= '0' && c <= '9') code |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') code |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') code |= unsigned(c - 'A' + 10);
      else error("invalid hex digit in \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (at_end()) error("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) error("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) error("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // surrogate pair
            if (text_.substr(pos_, 2) != "\\u") error("unpaired surrogate");
            pos_ += 2;
            const unsigned lo = parse_hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) error("invalid low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            error("unpaired low surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: error("invalid escape");
      }
    }
  }

  Value parse_number() {
    const std::size_t start = pos_;
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      error("invalid value");
    }
    if (peek() == '.') {
      integral = false;
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) error("digit expected after '.'");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) error("digit expected in exponent");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    const std::string token(text_.substr(start, pos_ - start));
    Value v;
    v.type_ = Value::Type::number;
    v.number_ = std::strtod(token.c_str(), nullptr);
    if (!std::isfinite(v.number_)) error("number out of range");
    if (integral) {
      errno = 0;
      char* end = nullptr;
      const long long i = std::strtoll(token.c_str(), &end, 10);
      if (errno == 0 && end == token.c_str() + token.size()) {
        v.integer_ = i;
        v.is_integer_ = true;
      }
    }
    return v;
  }

  std::string_view text_;
  std::string_view source_;
  std::size_t pos_ = 0;
};

/// Parses a whole document; `source` names the input in error messages.
inline Value parse(std::string_view text, std::string_view source = "json") {
  return Parser(text, source).parse_document();
}

namespace detail {
inline void write_string(std::ostream& out, const std::string& s) {
  out << '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\r': out << "\\r"; break;
      case '\t': out << "\\t"; break;
      default:
        if (c < 0x20) {
          const char* hex = "0123456789abcdef";
          out << "\\u00" << hex[c >> 4] << hex[c & 15];
        } else {
          out << char(c);
        }
    }
  }
  out << '"';
}
}  // namespace detail

/// Compact serialisation (numbers round-trip: integers exactly, doubles with 17 digits).
inline void write(std::ostream& out, const Value& v) {
  switch (v.type()) {
    case Value::Type::null: out << "null"; break;
    case Value::Type::boolean: out << (v.as_bool() ? "true" : "false"); break;
    case Value::Type::number:
      if (v.is_integer()) {
        out << v.as_integer();
      } else {
        std::ostringstream s;
        s.precision(17);
        s << v.as_number();
        out << s.str();
      }
      break;
    case Value::Type::string: detail::write_string(out, v.as_string()); break;
    case Value::Type::array: {
      out << '[';
      bool first = true;
      for (const Value& e : v.as_array()) {
        if (!first) out << ',';
        first = false;
        write(out, e);
      }
      out << ']';
      break;
    }
    case Value::Type::object: {
      out << '{';
      bool first = true;
      for (const auto& [k, e] : v.as_object()) {
        if (!first) out << ',';
        first = false;
        detail::write_string(out, k);
        out << ':';
        write(out, e);
      }
      out << '}';
      break;
    }
  }
}

inline std::string dump(const Value& v) {
  std::ostringstream out;
  write(out, v);
  return out.str();
}

}  // namespace json
ENGRAM_NAMESPACE_END
