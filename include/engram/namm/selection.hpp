// NAMM's eviction rule: protect the newest token, count negative scores per head, evict the same
// number d = min over heads from every head (its d lowest scores), optionally after a top-k cap.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "engram/core/error.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// scores[h] holds the scores of head h's tokens in cache order (every head the same length n).
/// Returns, per head, the kept indices in ascending order. A token is evictable iff its score is
/// below `threshold`; the newest token (index n - 1) never is. Every head drops
/// d = max(min_h #evictable_h, n - cap) tokens, its d lowest-scoring ones (ties: older first).
template <class T>
std::vector<std::vector<Index>> select_tokens(const std::vector<std::vector<T>>& scores, T threshold, Index cap) {
  check(!scores.empty(), "namm::select_tokens", "no heads");
  const Index n = Index(scores[0].size());
  for (const auto& s : scores) {
    check(Index(s.size()) == n, "namm::select_tokens", "heads hold different token counts");
    for (T x : s) check(!std::isnan(double(x)), "namm::select_tokens", "a score is NaN (non-finite features or parameters?)");
  }
  check(cap > 0, "namm::select_tokens", "cap must be positive, got ", cap);
  if (n == 0) return std::vector<std::vector<Index>>(scores.size());
  Index d = std::numeric_limits<Index>::max();
  for (const auto& s : scores) {
    Index c = 0;
    for (Index i = 0; i + 1 < n; ++i) c += s[std::size_t(i)] < threshold;
    d = std::min(d, c);
  }
  d = std::max(d, n - std::min(cap, n));
  d = std::min(d, n - 1);  // the newest token stays
  std::vector<std::vector<Index>> kept;
  for (const auto& s : scores) {
    std::vector<Index> order(static_cast<std::size_t>(n - 1));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return s[std::size_t(a)] < s[std::size_t(b)]; });
    std::vector<bool> evict(static_cast<std::size_t>(n), false);
    for (Index i = 0; i < d; ++i) evict[std::size_t(order[std::size_t(i)])] = true;
    std::vector<Index> k;
    for (Index i = 0; i < n; ++i)
      if (!evict[std::size_t(i)]) k.push_back(i);
    kept.push_back(std::move(k));
  }
  return kept;
}

}  // namespace namm
ENGRAM_NAMESPACE_END
