// The BAM scorer: single-head backward-masked attention over a head's cached tokens, residual and
// multiplicative output interaction, linear map to one score per token (4,172 parameters).
#pragma once

#include <span>
#include <vector>

#include "engram/core/attention.hpp"
#include "engram/nn/linear.hpp"
#include "engram/namm/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// Scores tokens from their features x [n, 25]:
///   [q | k | v] = x W_qkv + b_qkv;  o_i = softmax_{j >= i}(q_i . k_j / sqrt(32)) v;
///   [r | m] = o W_o + b_o;  h = x * (1 + m) + r;  s = h . w_s + b_s.
/// Parameters come from the official flat vector (evo-memory layout, weights stored [in, out]).
template <class T>
class BamScorer {
 public:
  static constexpr Index kParams = 4172;
  static constexpr Index F = NammConfig::kFeatures, H = NammConfig::kHidden;

  BamScorer() = default;
  /// Unpacks theta [4172]: W_qkv 25x96 | b_qkv 96 | W_o 32x50 | b_o 50 | w_s 25 | b_s.
  explicit BamScorer(std::span<const T> theta) : qkv_(F, 3 * H, true), out_(H, 2 * F, true), score_(F, 1, true) {
    check(Index(theta.size()) == kParams, "BamScorer", "expected ", kParams, " parameters, got ", theta.size());
    for (T x : theta) check(std::isfinite(double(x)), "BamScorer", "parameters must be finite");
    Index at = 0;
    auto take = [&](Linear<T>& l) {
      for (Index i = 0; i < l.in(); ++i)
        for (Index o = 0; o < l.out(); ++o) l.weight(o, i) = theta[std::size_t(at++)];  // [in, out] -> [out, in]
      for (Index o = 0; o < l.out(); ++o) l.bias[o] = theta[std::size_t(at++)];
    };
    take(qkv_);
    take(out_);
    take(score_);
  }

  /// scores [n] for tokens x [n, 25] in cache order (oldest first).
  void score(ConstView<T> x, std::span<T> scores, FlopCounter* flops = nullptr) const {
    const Index n = x.rows();
    check_shape(x, -1, F, "BamScorer", "features");
    check(Index(scores.size()) == n, "BamScorer", "expected ", n, " scores, got ", scores.size());
    if (n == 0) return;
    Tensor<T> qkv({n, 3 * H}), o({n, H}), rm({n, 2 * F}), h({n, F});
    qkv_.forward(x, qkv.view(), flops, FlopCategory::namm_scorer);
    const ConstView<T> k = qkv.view().middle_cols(H, H), v = qkv.view().middle_cols(2 * H, H);
    const std::vector<ConstView<T>> ks = {k}, vs = {v};
    AttentionInput<T> in;
    in.q = qkv.view().middle_cols(0, H);
    in.k = ks;
    in.v = vs;
    in.out = o.view();
    in.n_heads = 1;
    in.head_dim = H;
    in.mask = MaskKind::reverse_causal;  // token i attends to itself and every newer token
    attention<T>(in);
    if (flops) flops->add(FlopCategory::namm_scorer, 2 * flops::attention_product(visible_pairs(in, 0), H));
    out_.forward(o.view(), rm.view(), flops, FlopCategory::namm_scorer);
    for (Index i = 0; i < n; ++i)
      for (Index c = 0; c < F; ++c) h(i, c) = x(i, c) * (T(1) + rm(i, F + c)) + rm(i, c);
    Tensor<T> s({n, 1});
    score_.forward(h.view(), s.view(), flops, FlopCategory::namm_scorer);
    for (Index i = 0; i < n; ++i) scores[std::size_t(i)] = s(i, 0);
  }

 private:
  Linear<T> qkv_, out_, score_;
};

}  // namespace namm
ENGRAM_NAMESPACE_END
