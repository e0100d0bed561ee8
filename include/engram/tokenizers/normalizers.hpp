// tokenizer.json normalizers: Sequence, Prepend, Replace, Lowercase, Strip, StripAccents,
// NFC/NFD/NFKC/NFKD and BertNormalizer. Precompiled (SentencePiece charsmaps), Nmt and others are
// rejected with an Error naming the type.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tokenizers/json_fields.hpp"
#include "engram/tokenizers/regex.hpp"
#include "engram/tokenizers/unicode.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// Rewrites one piece of valid UTF-8 text (the text between added tokens).
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string_view text) const = 0;
};

namespace detail {

/// Calls f(cp, bytes) for each code point of valid UTF-8 `s`.
template <class F>
void for_each_char(std::string_view s, F&& f) {
  for (std::size_t i = 0; i < s.size();) {
    const utf8::Decoded d = utf8::decode(s, i);
    f(d.cp, s.substr(i, std::size_t(d.length)));
    i += std::size_t(d.length);
  }
}

/// Replaces every occurrence of a literal or a regex with `content`.
class Replacer {
 public:
  Replacer(const Pattern& p, std::string content) : content_(std::move(content)) {
    if (p.regex) regex_ = std::make_unique<Regex>(p.text);
    else literal_ = p.text;
  }
  std::string apply(std::string_view text) const {
    std::string out;
    out.reserve(text.size());
    std::size_t last = 0;
    if (regex_) {
      regex_->for_each_match(text, [&](std::size_t s, std::size_t e) {
        out.append(text.substr(last, s - last));
        out += content_;
        last = e;
      });
    } else if (!literal_.empty()) {
      for (std::size_t s = text.find(literal_); s != std::string_view::npos; s = text.find(literal_, last)) {
        out.append(text.substr(last, s - last));
        out += content_;
        last = s + literal_.size();
      }
    }
    out.append(text.substr(last));
    return out;
  }

 private:
  std::string literal_, content_;
  std::unique_ptr<Regex> regex_;
};

}  // namespace detail

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  std::string normalize(std::string_view text) const override {
    std::string s(text);
    for (const auto& n : steps_) s = n->normalize(s);
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string normalize(std::string_view text) const override { return text.empty() ? std::string() : prefix_ + std::string(text); }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const detail::Pattern& p, std::string content) : replacer_(p, std::move(content)) {}
  std::string normalize(std::string_view text) const override { return replacer_.apply(text); }

 private:
  detail::Replacer replacer_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  std::string normalize(std::string_view text) const override { return unicode::lowercase(text); }
};

/// Strips White_Space on the left and/or right.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string_view text) const override {
    std::size_t b = 0, e = text.size();
    if (left_)
      while (b < e) {
        const utf8::Decoded d = utf8::decode(text, b);
        if (!unicode::is_whitespace(d.cp)) break;
        b += std::size_t(d.length);
      }
    if (right_)
      while (e > b) {
        std::size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
        if (!unicode::is_whitespace(utf8::decode(text, s).cp)) break;
        e = s;
      }
    return std::string(text.substr(b, e - b));
  }

 private:
  bool left_, right_;
};

/// Removes combining marks (M*), as the reference's StripAccents (normally after NFD).
class StripAccentsNormalizer final : public Normalizer {
 public:
  std::string normalize(std::string_view text) const override {
    std::string out;
    out.reserve(text.size());
    detail::for_each_char(text, [&](char32_t c, std::string_view bytes) {
      if (!unicode::is_mark(c)) out.append(bytes);
    });
    return out;
  }
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::Form form) : form_(form) {}
  std::string normalize(std::string_view text) const override { return unicode::normalize(text, form_); }

 private:
  unicode::Form form_;
};

/// BERT's cleaning: drop NUL, U+FFFD and C* characters, map whitespace to ' ', surround CJK
/// ideographs with spaces, strip accents (NFD then drop Mn), lowercase.
class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool handle_chinese_chars, bool strip_accents, bool lowercase)
      : clean_text_(clean_text), chinese_(handle_chinese_chars), strip_accents_(strip_accents), lowercase_(lowercase) {}

  /// The CJK Unified Ideographs blocks BERT treats as words of their own.
  static bool is_chinese_char(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  }

  std::string normalize(std::string_view text) const override {
    std::string s;
    s.reserve(text.size() + 8);
    detail::for_each_char(text, [&](char32_t c, std::string_view bytes) {
      if (clean_text_) {
        // Removal comes first: U+000B, U+000C and U+0085 are both "other" and White_Space, and go.
        const bool tab_or_newline = c == '\t' || c == '\n' || c == '\r';
        if (c == 0 || c == 0xFFFD || (!tab_or_newline && unicode::is_other(c))) return;
        if (tab_or_newline || unicode::is_whitespace(c)) {
          s += ' ';
          return;
        }
      }
      if (chinese_ && is_chinese_char(c)) {
        s += ' ';
        s.append(bytes);
        s += ' ';
        return;
      }
      s.append(bytes);
    });
    if (strip_accents_) {
      const std::string decomposed = unicode::normalize(s, unicode::Form::nfd);
      s.clear();
      detail::for_each_char(decomposed, [&](char32_t c, std::string_view bytes) {
        if (!unicode::is_mark_nonspacing(c)) s.append(bytes);
      });
    }
    if (lowercase_) s = unicode::lowercase(s);
    return s;
  }

 private:
  bool clean_text_, chinese_, strip_accents_, lowercase_;
};

/// Builds the normalizer a tokenizer.json describes (nullptr for null).
inline std::unique_ptr<Normalizer> make_normalizer(const json::Value& v, std::string_view where = "normalizer") {
  if (v.is_null()) return nullptr;
  const std::string& type = detail::type_of(v, where);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const json::Value& n : detail::require(v, "normalizers", where).as_array("normalizer.normalizers"))
      if (auto step = make_normalizer(n, where)) steps.push_back(std::move(step));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(detail::require_string(v, "prepend", where));
  if (type == "Replace")
    return std::make_unique<ReplaceNormalizer>(detail::get_pattern(v, where), detail::require_string(v, "content", where));
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(detail::get_bool(v, "strip_left", true, where), detail::get_bool(v, "strip_right", true, where));
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(unicode::Form::nfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(unicode::Form::nfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(unicode::Form::nfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(unicode::Form::nfkd);
  if (type == "BertNormalizer") {
    const bool lowercase = detail::get_bool(v, "lowercase", true, where);
    return std::make_unique<BertNormalizer>(detail::get_bool(v, "clean_text", true, where), detail::get_bool(v, "handle_chinese_chars", true, where),
                                            detail::get_optional_bool(v, "strip_accents", where).value_or(lowercase), lowercase);
  }
  fail("tokenizer.json", where, ".type \"", type,
       "\" is not supported (supported: Sequence, Prepend, Replace, Lowercase, Strip, StripAccents, NFC, NFD, NFKC, NFKD, BertNormalizer)");
}

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
