// GPT-2's byte-level alphabet: each byte maps to one printable code point (printable Latin-1 bytes
// to themselves, the rest to U+0100 upwards), so any byte string is a string of vocabulary symbols.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "engram/tokenizers/utf8.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers::byte_level {

/// byte -> code point of the alphabet.
inline const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[std::size_t(b)] = printable ? char32_t(b) : next++;
    }
    return t;
  }();
  return table;
}

/// Code point of the alphabet -> byte, or nullopt for a code point outside it.
inline std::optional<unsigned char> char_to_byte(char32_t c) {
  static const std::array<int, 324> table = [] {  // the alphabet spans U+0021..U+0143
    std::array<int, 324> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_char()[std::size_t(b)]] = b;
    return t;
  }();
  if (c >= table.size() || table[c] < 0) return std::nullopt;
  return static_cast<unsigned char>(table[c]);
}

/// Bytes -> alphabet string (UTF-8).
inline std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) utf8::append(out, byte_to_char()[b]);
  return out;
}

/// Alphabet string -> bytes; nullopt when `s` holds a code point outside the alphabet.
inline std::optional<std::string> decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const utf8::Decoded d = utf8::decode(s, i);
    i += std::size_t(d.length);
    const auto b = d.valid ? char_to_byte(d.cp) : std::nullopt;
    if (!b) return std::nullopt;
    out += char(*b);
  }
  return out;
}

}  // namespace tokenizers::byte_level
ENGRAM_NAMESPACE_END
