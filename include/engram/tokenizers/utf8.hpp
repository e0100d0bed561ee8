// UTF-8 decoding, encoding and repair (U+FFFD for each maximal invalid subpart, as the WHATWG
// decoder, Python's errors="replace" and Rust's from_utf8_lossy do).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engram/core/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers::utf8 {

inline constexpr char32_t kReplacement = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

/// One decoded code point: `length` bytes were consumed; `valid` is false for a maximal invalid
/// subpart (then `cp` is U+FFFD and `length` is the subpart's size, at least 1).
struct Decoded {
  char32_t cp;
  int length;
  bool valid;
};

/// Decodes the code point starting at s[pos] (pos < s.size()).
inline Decoded decode(std::string_view s, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) return {b0, 1, true};
  int need;
  char32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte (excludes overlongs, surrogates, > U+10FFFF)
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 1, cp = b0 & 0x1F;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {kReplacement, 1, false};
  }
  for (int k = 1; k <= need; ++k) {
    if (pos + k >= s.size()) return {kReplacement, k, false};
    const unsigned char b = byte(pos + k);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return {kReplacement, k, false};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, need + 1, true};
}

/// Appends the UTF-8 encoding of `cp` (a Unicode scalar value).
inline void append(std::string& out, char32_t cp) {
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

inline std::string encode(char32_t cp) {
  std::string s;
  append(s, cp);
  return s;
}

/// True when `s` is well-formed UTF-8.
inline bool is_valid(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Decoded d = decode(s, i);
    if (!d.valid) return false;
    i += std::size_t(d.length);
  }
  return true;
}

/// `s` with every maximal invalid subpart replaced by U+FFFD.
inline std::string repair(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (std::size_t i = 0; i < s.size();) {
    const Decoded d = decode(s, i);
    if (d.valid) out.append(s.substr(i, std::size_t(d.length)));
    else out += kReplacementUtf8;
    i += std::size_t(d.length);
  }
  return out;
}

/// Number of code points of valid UTF-8 `s`.
inline std::size_t length(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace tokenizers::utf8
ENGRAM_NAMESPACE_END
