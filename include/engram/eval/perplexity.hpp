// Held-out bits per token bucketed by position in the context (0-256, 256-512, ...): the curve that
// shows whether a model uses long context (it keeps falling with position) or not (it flattens).
#pragma once

#include <chrono>
#include <cmath>
#include <numbers>
#include <string_view>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/eval/reader.hpp"
#include "engram/tasks/rng.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// Mean bits per token by position bucket.
struct PositionCurve {
  Index bucket = 256;            ///< positions per bucket
  Index context = 0;             ///< tokens per window
  Index windows = 0;
  std::vector<double> bits;      ///< bits[b]: mean -log2 p over predictions at positions [b * bucket, (b + 1) * bucket)
  std::vector<Index> count;      ///< predictions per bucket
  double mean_bits = 0;          ///< over every prediction of every window
  double seconds = 0;
  std::size_t peak_state_bytes = 0;
};

/// Options of bits_by_position.
struct PositionOptions {
  Index context = 2048;
  Index windows = 16;
  Index bucket = 256;
  std::uint64_t seed = 0x7E57'0B17'0000'0001ull;  ///< where the windows start (held-out text only)
  bool parallel = true;                           ///< windows in parallel over threads
};

/// Scores `windows` windows of context + 1 tokens of `ids` (held-out text, tokenised): the first
/// token is read, the next `context` are scored; the prediction of the token at window position p
/// (p >= 1, i.e. after p tokens of context) lands in bucket (p - 1) / bucket.
inline PositionCurve bits_by_position(const Reader& reader, std::span<const std::int32_t> ids, const PositionOptions& o = {}) {
  check(o.context > 0 && o.windows > 0 && o.bucket > 0, "eval::bits_by_position", "context, windows and bucket must be positive");
  check(Index(ids.size()) > o.context + 1, "eval::bits_by_position", "held-out text of ", ids.size(), " tokens is shorter than one window of ",
        o.context + 1);
  const auto t0 = std::chrono::steady_clock::now();
  PositionCurve c;
  c.bucket = o.bucket, c.context = o.context, c.windows = o.windows;
  const Index n_buckets = (o.context + o.bucket - 1) / o.bucket;
  std::vector<std::vector<double>> per_window(std::size_t(o.windows), std::vector<double>(std::size_t(o.context)));
  std::vector<std::size_t> bytes(std::size_t(o.windows));
  tasks::Rng rng(o.seed);
  std::vector<Index> starts;
  for (Index w = 0; w < o.windows; ++w) starts.push_back(rng.index(Index(ids.size()) - o.context - 1));
  parallel_for(0, o.windows, [&](Index w) {
    const auto window = ids.subspan(std::size_t(starts[std::size_t(w)]), std::size_t(o.context + 1));
    auto s = reader.start();
    s->read(window.first(1));
    s->score(window.subspan(1), per_window[std::size_t(w)]);
    bytes[std::size_t(w)] = s->state_bytes();
  }, o.parallel);
  c.bits.assign(std::size_t(n_buckets), 0.0);
  c.count.assign(std::size_t(n_buckets), 0);
  double total = 0;
  for (Index w = 0; w < o.windows; ++w) {
    c.peak_state_bytes = std::max(c.peak_state_bytes, bytes[std::size_t(w)]);
    for (Index p = 0; p < o.context; ++p) {
      const double b = -per_window[std::size_t(w)][std::size_t(p)] / std::numbers::ln2;
      c.bits[std::size_t(p / o.bucket)] += b;
      ++c.count[std::size_t(p / o.bucket)];
      total += b;
    }
  }
  for (Index b = 0; b < n_buckets; ++b) c.bits[std::size_t(b)] /= double(c.count[std::size_t(b)]);
  c.mean_bits = total / double(o.windows * o.context);
  c.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return c;
}

}  // namespace eval
ENGRAM_NAMESPACE_END
