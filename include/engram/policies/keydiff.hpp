// KeyDiff (Park et al. 2025, arXiv 2504.15364; kvpress's KeyDiffPress): keep the tokens whose keys
// differ most from the average key direction of the cache.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"
#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// KeyDiff scores of keys [n, d]: s_i = -cos(k_i, a) with the anchor a = mean_j k_j / ||k_j||
/// (so tokens whose keys point away from the average are kept). Norms below 1e-12 count as 1e-12
/// (F.normalize), a cosine's denominator below 1e-8 as 1e-8 (F.cosine_similarity).
template <class T>
std::vector<double> keydiff_scores(ConstView<T> keys) {
  const Index n = keys.rows(), d = keys.cols();
  std::vector<double> anchor(static_cast<std::size_t>(d), 0.0), scores(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    double norm = 0;
    for (Index c = 0; c < d; ++c) norm += double(keys(i, c)) * double(keys(i, c));
    const double inv = 1.0 / std::max(std::sqrt(norm), 1e-12);
    for (Index c = 0; c < d; ++c) anchor[std::size_t(c)] += double(keys(i, c)) * inv / double(n);
  }
  double anchor_norm = 0;
  for (double a : anchor) anchor_norm += a * a;
  anchor_norm = std::sqrt(anchor_norm);
  for (Index i = 0; i < n; ++i) {
    double dot = 0, norm = 0;
    for (Index c = 0; c < d; ++c) dot += double(keys(i, c)) * anchor[std::size_t(c)], norm += double(keys(i, c)) * double(keys(i, c));
    scores[std::size_t(i)] = -dot / std::max(std::sqrt(norm) * anchor_norm, 1e-8);
  }
  return scores;
}

namespace detail {
// Per layer and KV head: the sum of the cached tokens' unit keys (the anchor times the count).
class KeyDiffState final : public PolicyState {
 public:
  KeyDiffState(Index n_layers, Index n_heads)
      : sums(static_cast<std::size_t>(n_layers), std::vector<std::vector<double>>(static_cast<std::size_t>(n_heads))) {}
  std::unique_ptr<PolicyState> clone() const override { return std::make_unique<KeyDiffState>(*this); }
  std::size_t bytes() const override {
    std::size_t b = 0;
    for (const auto& layer : sums)
      for (const auto& s : layer) b += s.size() * sizeof(double);
    return b;
  }
  std::vector<std::vector<std::vector<double>>> sums;
};
}  // namespace detail

/// KeyDiff: after every step that leaves more tokens than the budget, evict the tokens whose keys
/// are most similar (cosine) to the anchor, the mean unit key of the head's cache including the
/// step's tokens; the newest token is always kept. The anchor is kept as a running sum in double
/// (each key enters and leaves once); the scores need one dot product per cached key and step, and
/// a 4-byte column holds each key's inverse norm. Needs no attention probabilities.
///
/// The kept set depends on the step sizes (the anchor is the cache's at each eviction), as the
/// paper's block-wise prompt processing does.
template <class T>
class KeyDiffPolicy final : public detail::BudgetPolicy<T> {
 public:
  static constexpr const char* kColumn = "keydiff.inverse_norm";
  explicit KeyDiffPolicy(Budget b) : detail::BudgetPolicy<T>(b, "KeyDiffPolicy") {}
  std::string name() const override { return "keydiff"; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index n_heads) const override {
    return std::make_unique<detail::KeyDiffState>(n_layers, n_heads);
  }
  void attach(LayerCache<T>& c) const override { c.add_column(kColumn, 1); }

  void after_layer(Index layer, LayerCache<T>& c, PolicyState* state, const StepInfo& step) const override {
    auto& sums = static_cast<detail::KeyDiffState*>(state)->sums.at(std::size_t(layer));
    const Index budget = this->budget_.allowed(step.tokens_seen);
    const std::int64_t newest = std::int64_t(step.tokens_seen) - 1;
    thread_local std::vector<T> anchor;
    thread_local std::vector<T> similarity;
    thread_local Tensor<T> scratch;  // the keys as T, for a 16-bit cache
    for (Index h = 0; h < c.n_heads(); ++h) {
      TokenTable<T>& t = c.head(h);
      const Index d = t.head_dim(), n = t.size();
      std::vector<double>& sum = sums.at(std::size_t(h));
      sum.resize(std::size_t(d), 0.0);
      View<T> inv = t.column(t.column_id(kColumn));
      const ConstView<T> fresh = t.key_rows(n - step.n_new, step.n_new, scratch);
      for (Index j = 0; j < step.n_new; ++j) {  // the step's tokens enter the anchor
        const Index i = n - step.n_new + j;
        inv(i, 0) = T(1) / std::max(std::sqrt(simd::dot(fresh.row(j), fresh.row(j), d)), T(1e-12));
        for (Index c2 = 0; c2 < d; ++c2) sum[std::size_t(c2)] += double(fresh(j, c2)) * double(inv(i, 0));
      }
      if (n <= budget) continue;
      const ConstView<T> k = t.keys_as(scratch);
      // cos(k_i, a) ranks like (k_i . sum) / |k_i|: the anchor's length is the same for every token.
      anchor.resize(std::size_t(d));
      for (Index c2 = 0; c2 < d; ++c2) anchor[std::size_t(c2)] = T(sum[std::size_t(c2)]);
      similarity.resize(std::size_t(n));
      // One matrix-vector product over the keys (vectorised across rows, no horizontal sums).
      matmul<T>(k, ConstView<T>(anchor.data(), d, 1, 1), View<T>(similarity.data(), n, 1, 1));
      for (Index i = 0; i < n; ++i) similarity[std::size_t(i)] *= inv(i, 0);
      const auto rows = detail::select_lowest(t, n - budget, [&](Index i) { return -similarity[std::size_t(i)]; },
                                              [&](Index i) { return t.position(i) != newest; });
      for (Index r : rows)  // the evicted tokens leave the anchor
        for (Index c2 = 0; c2 < d; ++c2) sum[std::size_t(c2)] -= double(k(r, c2)) * double(inv(r, 0));
      t.evict(rows);
    }
  }
};

}  // namespace policies
ENGRAM_NAMESPACE_END
