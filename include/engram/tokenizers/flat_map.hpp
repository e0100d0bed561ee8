// Open-addressing hash tables for the encode path (the word cache and the BPE merge table): one
// probe sequence in a flat array, keys stored inline or in one arena, no allocation per entry.
// std::unordered_map cost 40 ns per cached-word lookup here; these take a few.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers::detail {

/// Equality of two byte strings of the same length (inline: keys are short, a memcmp call is not).
inline bool same_bytes(const char* a, const char* b, std::size_t n) {
  for (; n >= 8; a += 8, b += 8, n -= 8) {
    std::uint64_t x, y;
    std::memcpy(&x, a, 8);
    std::memcpy(&y, b, 8);
    if (x != y) return false;
  }
  for (; n > 0; ++a, ++b, --n)
    if (*a != *b) return false;
  return true;
}

/// 64-bit hash of a short byte string (8-byte words, multiply-xorshift mixing).
inline std::uint64_t hash_bytes(std::string_view s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  if (i < s.size()) {
    std::uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
  }
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 33);
}

inline std::uint64_t hash_u64(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  return x ^ (x >> 33);
}

/// string -> V, keys copied into one arena. Insert-only (what a per-call cache needs).
template <class V>
class StringTable {
 public:
  explicit StringTable(std::size_t capacity = 1024) {
    std::size_t c = 16;
    while (c < capacity * 2) c *= 2;
    slots_.assign(c, Slot{});
  }
  std::size_t size() const { return size_; }

  const V* find(std::string_view key) const {
    const std::uint64_t h = hash_bytes(key);
    for (std::size_t i = std::size_t(h) & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (s.length == kEmpty) return nullptr;
      if (s.hash == h && s.length == key.size() && same_bytes(arena_.data() + s.offset, key.data(), key.size())) return &s.value;
    }
  }

  /// Inserts `key` if absent; returns its value.
  V& insert(std::string_view key, V value) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    const std::uint64_t h = hash_bytes(key);
    std::size_t i = std::size_t(h) & (slots_.size() - 1);
    for (;; i = (i + 1) & (slots_.size() - 1)) {
      Slot& s = slots_[i];
      if (s.length == kEmpty) break;
      if (s.hash == h && s.length == key.size() && same_bytes(arena_.data() + s.offset, key.data(), key.size())) return s.value;
    }
    Slot& s = slots_[i];
    s.hash = h;
    s.offset = std::uint32_t(arena_.size());
    s.length = std::uint32_t(key.size());
    s.value = std::move(value);
    arena_.append(key);
    ++size_;
    return s.value;
  }

 private:
  static constexpr std::uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t offset = 0, length = kEmpty;
    V value{};
  };
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    for (Slot& s : old) {
      if (s.length == kEmpty) continue;
      std::size_t i = std::size_t(s.hash) & (slots_.size() - 1);
      while (slots_[i].length != kEmpty) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = std::move(s);
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  std::size_t size_ = 0;
};

/// uint64 -> V (the BPE merge table, keyed by a pair of ids). Insert or assign, then read-only.
template <class V>
class U64Table {
 public:
  void reserve(std::size_t n) {
    std::size_t c = 16;
    while (c < n * 2) c *= 2;
    if (c > slots_.size()) rehash(c);
  }
  const V* find(std::uint64_t key) const {
    if (slots_.empty()) return nullptr;
    for (std::size_t i = std::size_t(hash_u64(key)) & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (!s.used) return nullptr;
      if (s.key == key) return &s.value;
    }
  }
  void insert_or_assign(std::uint64_t key, V value) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(std::max<std::size_t>(16, slots_.size() * 2));
    std::size_t i = std::size_t(hash_u64(key)) & (slots_.size() - 1);
    while (slots_[i].used && slots_[i].key != key) i = (i + 1) & (slots_.size() - 1);
    if (!slots_[i].used) ++size_;
    slots_[i] = {key, std::move(value), true};
  }

 private:
  struct Slot {
    std::uint64_t key = 0;
    V value{};
    bool used = false;
  };
  void rehash(std::size_t capacity) {
    std::vector<Slot> old(capacity);
    old.swap(slots_);
    for (Slot& s : old) {
      if (!s.used) continue;
      std::size_t i = std::size_t(hash_u64(s.key)) & (slots_.size() - 1);
      while (slots_[i].used) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = std::move(s);
    }
  }
  std::vector<Slot> slots_;
  std::size_t size_ = 0;
};

}  // namespace tokenizers::detail
ENGRAM_NAMESPACE_END
