// PCRE2 (UTF + UCP, JIT when available) for the Split pre-tokenizer's patterns, with the one
// translation the reference's Oniguruma syntax needs: its \s is Unicode White_Space (U+0085
// included), which PCRE2's \s is not.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// Rewrites Oniguruma's \s and \S into explicit White_Space classes. Throws Error for \S inside a
/// character class (PCRE2 has no class subtraction; no published tokenizer uses it).
inline std::string translate_oniguruma(std::string_view pattern) {
  static constexpr std::string_view kSpace =
      "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kSpace) : "[" + std::string(kSpace) + "]";
      } else if (e == 'S') {
        check(!in_class, "tokenizers::Regex", "\\S inside a character class is not supported, in pattern ", pattern);
        out += "[^" + std::string(kSpace) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // a leading ']' is literal
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

/// A compiled pattern. Immutable after construction; matching is thread-safe (each call brings
/// its own match data).
class Regex {
 public:
  /// `pattern` in the reference's (Oniguruma) syntax; `literal` escapes it entirely.
  explicit Regex(std::string_view pattern, bool literal = false) : source_(pattern) {
    const std::string translated = literal ? std::string(pattern) : translate_oniguruma(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options, &error, &offset, nullptr));
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      fail("tokenizers::Regex", "cannot compile pattern ", pattern, " at offset ", offset, ": ", reinterpret_cast<const char*>(message));
    }
    jit_ = pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE) == 0;
  }

  const std::string& source() const { return source_; }
  bool jit() const { return jit_; }

  /// Calls on_match(start, end) for each successive non-overlapping match in valid UTF-8 `text`
  /// (an empty match advances by one code point, as the reference's find_iter does).
  template <class OnMatch>
  void for_each_match(std::string_view text, OnMatch&& on_match) const {
    Matcher m(*this);
    std::size_t pos = 0;
    while (pos <= text.size()) {
      std::size_t start, end;
      if (!m.find(text, pos, start, end)) break;
      if (end == start) {  // empty match: skip one code point
        if (start >= text.size()) break;
        pos = start + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
        continue;
      }
      on_match(start, end);
      pos = end;
    }
  }

 private:
  struct CodeDeleter {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  // Per-call match state: match data and, for JIT, a stack large enough for long inputs.
  class Matcher {
   public:
    explicit Matcher(const Regex& re) : re_(re), data_(pcre2_match_data_create_from_pattern(re.code_.get(), nullptr)) {
      check(data_ != nullptr, "tokenizers::Regex", "out of memory creating match data");
      if (re.jit_) {
        context_ = pcre2_match_context_create(nullptr);
        stack_ = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);  // grows on demand up to 8 MB
        if (context_ && stack_) pcre2_jit_stack_assign(context_, nullptr, stack_);
      }
    }
    ~Matcher() {
      if (stack_) pcre2_jit_stack_free(stack_);
      if (context_) pcre2_match_context_free(context_);
      pcre2_match_data_free(data_);
    }
    Matcher(const Matcher&) = delete;
    Matcher& operator=(const Matcher&) = delete;

    bool find(std::string_view text, std::size_t from, std::size_t& start, std::size_t& end) {
      const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
      const int rc = re_.jit_ ? pcre2_jit_match(re_.code_.get(), subject, text.size(), from, 0, data_, context_)
                              : pcre2_match(re_.code_.get(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, data_, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return false;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        fail("tokenizers::Regex", "matching pattern ", re_.source_, " failed: ", reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data_);
      start = ov[0];
      end = ov[1];
      return true;
    }

   private:
    const Regex& re_;
    pcre2_match_data* data_ = nullptr;
    pcre2_match_context* context_ = nullptr;
    pcre2_jit_stack* stack_ = nullptr;
  };

  std::string source_;
  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  bool jit_ = false;
};

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
