// Unicode character properties, per-code-point lowercasing and the four normalization forms, from
// ICU (the reference tokenizers use Rust's std tables; both follow the Unicode Character Database).
#pragma once

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utypes.h>

#include <string>
#include <string_view>
#include <vector>

#include "engram/core/error.hpp"
#include "engram/tokenizers/utf8.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers::unicode {

/// White_Space property (Rust's char::is_whitespace, regex \s).
inline bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_isUWhiteSpace(UChar32(c));
}
/// General categories Cc, Cf, Cs, Co: BERT's "control" test. Unassigned code points (Cn) are not
/// included: the reference's table (the unicode_categories crate) keeps them, e.g. U+D7FF.
inline bool is_other(char32_t c) {
  return (U_GET_GC_MASK(UChar32(c)) & (U_GC_CC_MASK | U_GC_CF_MASK | U_GC_CS_MASK | U_GC_CO_MASK)) != 0;
}
/// General category P*.
inline bool is_punctuation(char32_t c) { return (U_GET_GC_MASK(UChar32(c)) & U_GC_P_MASK) != 0; }
/// General category Mn.
inline bool is_mark_nonspacing(char32_t c) { return u_charType(UChar32(c)) == U_NON_SPACING_MARK; }
/// General category M* (Mn, Mc, Me).
inline bool is_mark(char32_t c) { return (U_GET_GC_MASK(UChar32(c)) & U_GC_M_MASK) != 0; }
/// Rust regex's \w: Alphabetic, M*, Nd, Pc, Join_Control.
inline bool is_word(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  const auto mask = U_GET_GC_MASK(UChar32(c));
  return u_hasBinaryProperty(UChar32(c), UCHAR_ALPHABETIC) || (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(UChar32(c), UCHAR_JOIN_CONTROL);
}

/// Full lowercase mapping of each code point on its own (Rust's char::to_lowercase: no context,
/// so a final sigma becomes σ like any other). Input must be valid UTF-8.
inline std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out += (b >= 'A' && b <= 'Z') ? char(b + 32) : char(b);
      ++i;
      continue;
    }
    const utf8::Decoded d = utf8::decode(s, i);
    i += std::size_t(d.length);
    UChar src[2], dst[8];
    int32_t n = 0;
    U16_APPEND_UNSAFE(src, n, UChar32(d.cp));
    UErrorCode err = U_ZERO_ERROR;
    const int32_t m = u_strToLower(dst, 8, src, n, "", &err);
    check(U_SUCCESS(err), "tokenizers::unicode::lowercase", "ICU u_strToLower failed: ", u_errorName(err));
    for (int32_t k = 0; k < m;) {
      UChar32 c;
      U16_NEXT(dst, k, m, c);
      utf8::append(out, char32_t(c));
    }
  }
  return out;
}

enum class Form { nfc, nfd, nfkc, nfkd };

/// Unicode normalization of valid UTF-8 text.
inline std::string normalize(std::string_view s, Form form) {
  bool ascii = true;
  for (unsigned char c : s) ascii &= c < 0x80;
  if (ascii) return std::string(s);  // every normalization form leaves ASCII unchanged
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* n = form == Form::nfc ? unorm2_getNFCInstance(&err)
                          : form == Form::nfd ? unorm2_getNFDInstance(&err)
                          : form == Form::nfkc ? unorm2_getNFKCInstance(&err)
                                               : unorm2_getNFKDInstance(&err);
  check(U_SUCCESS(err), "tokenizers::unicode::normalize", "ICU normalizer unavailable: ", u_errorName(err));
  std::vector<UChar> src(s.size() + 1);
  int32_t src_len = 0;
  u_strFromUTF8(src.data(), int32_t(src.size()), &src_len, s.data(), int32_t(s.size()), &err);
  check(U_SUCCESS(err), "tokenizers::unicode::normalize", "invalid UTF-8 input: ", u_errorName(err));
  // A first guess for the decomposed length; ICU reports overflow and the exact size, then we retry.
  std::vector<UChar> dst(std::size_t(src_len) * 4 + 16);
  int32_t dst_len = unorm2_normalize(n, src.data(), src_len, dst.data(), int32_t(dst.size()), &err);
  if (err == U_BUFFER_OVERFLOW_ERROR) {
    err = U_ZERO_ERROR;
    dst.resize(std::size_t(dst_len) + 1);
    dst_len = unorm2_normalize(n, src.data(), src_len, dst.data(), int32_t(dst.size()), &err);
  }
  check(U_SUCCESS(err), "tokenizers::unicode::normalize", "ICU normalization failed: ", u_errorName(err));
  std::string out(std::size_t(dst_len) * 3, '\0');
  int32_t out_len = 0;
  u_strToUTF8(out.data(), int32_t(out.size()), &out_len, dst.data(), dst_len, &err);
  check(U_SUCCESS(err), "tokenizers::unicode::normalize", "UTF-8 conversion failed: ", u_errorName(err));
  out.resize(std::size_t(out_len));
  return out;
}

}  // namespace tokenizers::unicode
ENGRAM_NAMESPACE_END
