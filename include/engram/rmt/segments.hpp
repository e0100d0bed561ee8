// Splitting a sequence of n tokens into segments of at most s, left- or right-aligned (rmt.md 2.1).
#pragma once

#include <algorithm>
#include <vector>

#include "engram/rmt/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// One segment: content tokens [begin, begin + size) of the sequence.
struct Segment {
  Index begin = 0;
  Index size = 0;
  bool operator==(const Segment&) const = default;
};

/// Size of the first segment of an n-token sequence: s, or n mod s when right-aligned and the
/// length is not a multiple of s (and n itself when n < s, in both alignments).
inline Index first_segment_size(Index n, Index s, Alignment alignment) {
  check(n > 0, "rmt::split", "empty sequence");
  check(s > 0, "rmt::split", "segment size must be positive, got ", s);
  if (alignment == Alignment::left || n % s == 0) return std::min(n, s);
  return n % s;
}

/// Every segment of an n-token sequence, in order; they tile [0, n) and all but one have s tokens.
inline std::vector<Segment> split(Index n, Index s, Alignment alignment) {
  std::vector<Segment> out;
  Index begin = 0, size = first_segment_size(n, s, alignment);
  while (begin < n) {
    out.push_back({begin, size});
    begin += size;
    size = std::min(s, n - begin);
  }
  return out;
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
