// Analytic FLOP formulas (a multiply-add counts 2) and a per-category counter layers report into.
#pragma once

#include <array>
#include <cstdint>
#include <ostream>
#include <string_view>

#include "engram/core/config.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Where FLOPs are spent; benchmarks print the counter beside measured time.
enum class FlopCategory : int {
  projections,       ///< Q/K/V/O and other dense projections inside mixers
  attention_scores,  ///< Q K^T
  attention_values,  ///< P V
  mlp,               ///< feed-forward blocks
  lm_head,           ///< vocabulary projection
  ttt_inner,         ///< TTT inner-model forward, gradient and update
  namm_features,     ///< STFT + EMA of attention history
  namm_scorer,       ///< BAM scoring network
  other,             ///< norms, activations, softmax and the rest
  count_
};

inline constexpr std::array<std::string_view, std::size_t(FlopCategory::count_)> kFlopCategoryNames = {
    "projections", "attention_scores", "attention_values", "mlp", "lm_head",
    "ttt_inner", "namm_features", "namm_scorer", "other"};

/// FLOPs accumulated by category. Not thread-safe: each sequence state owns one.
class FlopCounter {
 public:
  void add(FlopCategory c, double flops) { by_category_[std::size_t(c)] += flops; }
  double operator[](FlopCategory c) const { return by_category_[std::size_t(c)]; }
  double total() const {
    double t = 0;
    for (double f : by_category_) t += f;
    return t;
  }
  double attention() const { return (*this)[FlopCategory::attention_scores] + (*this)[FlopCategory::attention_values]; }
  void reset() { by_category_.fill(0.0); }
  /// Adds `fraction` of every category of o (a batched product's share of one sequence).
  void add_share(const FlopCounter& o, double fraction) {
    for (std::size_t i = 0; i < by_category_.size(); ++i) by_category_[i] += fraction * o.by_category_[i];
  }
  FlopCounter& operator+=(const FlopCounter& o) {
    for (std::size_t i = 0; i < by_category_.size(); ++i) by_category_[i] += o.by_category_[i];
    return *this;
  }
  friend std::ostream& operator<<(std::ostream& out, const FlopCounter& f) {
    for (std::size_t i = 0; i < f.by_category_.size(); ++i)
      if (f.by_category_[i] > 0) out << kFlopCategoryNames[i] << '=' << f.by_category_[i] << ' ';
    return out << "total=" << f.total();
  }

 private:
  std::array<double, std::size_t(FlopCategory::count_)> by_category_{};
};

namespace flops {

/// [m, k] x [k, n].
constexpr double gemm(Index m, Index n, Index k) { return 2.0 * double(m) * double(n) * double(k); }

/// Number of (query, key) pairs a causal mask leaves visible when `n_queries` queries are the last
/// rows of `n_keys` keys (query i sees keys 0 .. n_keys - n_queries + i).
constexpr double causal_pairs(Index n_queries, Index n_keys) {
  const double q = double(n_queries), off = double(n_keys - n_queries);
  return q * off + q * (q + 1) / 2;
}

/// Q K^T (or P V) over the visible pairs of one head: 2 * pairs * head_dim. The full-attention
/// convention 4 * T^2 * d counts both products of a dense mask; causal halves it.
constexpr double attention_product(double pairs, Index head_dim) { return 2.0 * pairs * double(head_dim); }

}  // namespace flops
ENGRAM_NAMESPACE_END
