// L2 norm / KNorm (Devoto et al. 2024, arXiv 2406.11430): keep the tokens whose keys have the
// lowest L2 norm (a low key norm goes with high attention).
#pragma once

#include <cmath>
#include <string>

#include "engram/core/simd.hpp"
#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// KNorm: after every step that leaves more tokens than the budget, evict the tokens whose keys
/// (as cached, after RoPE, which preserves the norm) have the largest L2 norm. The newest token is
/// always kept (a decode-time policy must not drop the key the next query needs most). Each key's
/// norm is computed once, when it arrives, into a 4-byte column. Needs no attention probabilities.
///
/// The kept set does not depend on how the tokens are split into steps: the greedy rule keeps the
/// newest token and the budget - 1 lowest norms of all the others, whatever the step sizes.
template <class T>
class KNormPolicy final : public detail::BudgetPolicy<T> {
 public:
  static constexpr const char* kColumn = "knorm.key_norm";
  explicit KNormPolicy(Budget b) : detail::BudgetPolicy<T>(b, "KNormPolicy") {}
  std::string name() const override { return "knorm"; }
  void attach(LayerCache<T>& c) const override { c.add_column(kColumn, 1); }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    const std::int64_t newest = std::int64_t(step.tokens_seen) - 1;
    thread_local Tensor<T> scratch;  // the step's keys as T, for a 16-bit cache
    for (Index h = 0; h < c.n_heads(); ++h) {  // the step's tokens are the last n_new rows
      TokenTable<T>& t = c.head(h);
      View<T> norm = t.column(t.column_id(kColumn));
      const Index first = t.size() - step.n_new;
      const ConstView<T> k = t.key_rows(first, step.n_new, scratch);
      for (Index j = 0; j < step.n_new; ++j) norm(first + j, 0) = std::sqrt(simd::dot(k.row(j), k.row(j), k.cols()));
    }
    this->trim_heads(c, step, [&](TokenTable<T>& t, Index excess) {
      const ConstView<T> norm = t.column(t.column_id(kColumn));
      detail::evict_lowest(t, excess, [&](Index i) { return -norm(i, 0); }, [&](Index i) { return t.position(i) != newest; });
    });
  }
};

}  // namespace policies
ENGRAM_NAMESPACE_END
