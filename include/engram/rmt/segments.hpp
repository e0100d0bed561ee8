// Splitting a sequence of n tokens into segments of at most s, left- or right-aligned (rmt.md 2.1).
#pragma once

#include <algorithm>
#include <span>
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

/// The streaming loop of the recurrent wrappers: appends `tokens` to the incomplete segment in
/// `buffer` and calls run(segment) for every segment they complete and a token follows (next_size()
/// gives the size of the segment being filled). A completed segment stays in `buffer` until the next
/// token arrives: the sequence may end there, and an answer then continues that segment as the
/// official RMT generate does (rmt::Continuation::answer). A whole segment found in `tokens` with
/// more tokens after it runs without a copy.
template <class NextSize, class Run>
void feed_segments(std::span<const std::int32_t> tokens, std::vector<std::int32_t>& buffer, NextSize&& next_size, Run&& run) {
  while (!tokens.empty()) {
    const std::size_t size = std::size_t(next_size());
    if (buffer.size() == size) {  // the held segment is followed by a token: it runs now
      run(std::span<const std::int32_t>(buffer));
      buffer.clear();
      continue;
    }
    if (buffer.empty() && tokens.size() > size) {
      run(tokens.first(size));
      tokens = tokens.subspan(size);
      continue;
    }
    const std::size_t take = std::min(size - buffer.size(), tokens.size());
    buffer.insert(buffer.end(), tokens.begin(), tokens.begin() + std::ptrdiff_t(take));
    tokens = tokens.subspan(take);
  }
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
