// Seeded random draws that give the same values with every standard library: std::mt19937_64 (its
// output sequence is fixed by the standard) and distributions written out here, because
// std::uniform_int_distribution and friends differ between implementations.
#pragma once

#include <cstdint>
#include <random>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

/// SplitMix64 finaliser: decorrelates seeds derived from one another (seed, seed + 1, ...).
constexpr std::uint64_t mix_seed(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// A portable, deterministic random source.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}

  std::uint64_t next() { return engine_(); }

  /// Uniform integer in [0, n), unbiased: draws in the top partial range of 2^64 are rejected.
  std::uint64_t below(std::uint64_t n) {
    check(n > 0, "tasks::Rng", "below(0): empty range");
    const std::uint64_t reject_under = (0 - n) % n;  // 2^64 mod n
    while (true) {
      const std::uint64_t x = engine_();
      if (x >= reject_under) return x % n;
    }
  }
  /// Uniform index in [0, n).
  Index index(Index n) {
    check(n > 0, "tasks::Rng", "index(", n, "): empty range");
    return Index(below(std::uint64_t(n)));
  }
  /// Uniform integer in [lo, hi].
  Index between(Index lo, Index hi) {
    check(lo <= hi, "tasks::Rng", "between(", lo, ", ", hi, "): empty range");
    return lo + Index(below(std::uint64_t(hi - lo) + 1));
  }
  bool coin() { return (engine_() >> 63) != 0; }

 private:
  std::mt19937_64 engine_;
};

}  // namespace tasks
ENGRAM_NAMESPACE_END
