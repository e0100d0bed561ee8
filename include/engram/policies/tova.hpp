// TOVA, Token Omission Via Attention (Oren et al. 2024, arXiv 2401.06104): drop the tokens the
// current query attends to least, averaged over the layer's heads.
#pragma once

#include <string>
#include <span>
#include <vector>

#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// TOVA: after every step that leaves more tokens than the budget, score every cached token (the
/// step's own included) by the attention the step's last query gives it, averaged over all query
/// heads of the layer, and drop the lowest; every head of a layer drops the same tokens, so the
/// layer's tables stay row-for-row identical in positions.
template <class T>
class TovaPolicy final : public detail::AttentionColumnPolicy<T, T> {
 public:
  static constexpr const char* kColumn = "tova.last_attention";
  explicit TovaPolicy(Budget b) : detail::AttentionColumnPolicy<T, T>(b, "TovaPolicy", kColumn) {}
  std::string name() const override { return "tova"; }
  ProbabilitySink<T>* sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step) const override {
    this->clear_column(c);  // a key the last query cannot see keeps probability 0
    return this->column_sink(layer, c, st, step, step.tokens_seen - 1, true);
  }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    const Index budget = this->budget_.allowed(step.tokens_seen);
    TokenTable<T>& first = c.head(0);
    const Index n = first.size();
    for (Index h = 1; h < c.n_heads(); ++h) check(c.head(h).size() == n, "TovaPolicy", "heads of a layer out of step");
    if (n <= budget) return;
    thread_local std::vector<double> mean;
    mean.assign(std::size_t(n), 0.0);
    for (Index h = 0; h < c.n_heads(); ++h) {
      const ConstView<T> col = c.head(h).column(this->column_id(c.head(h)));
      for (Index i = 0; i < n; ++i) mean[std::size_t(i)] += double(col(i, 0));
    }
    // Head 0 chooses (its positions break ties); every head then evicts the same rows, which hold
    // the same tokens because every head went through the same evictions.
    const auto rows = detail::select_lowest(first, n - budget, [&](Index i) { return mean[std::size_t(i)]; },
                                            [](Index) { return true; });
    for (Index h = 1; h < c.n_heads(); ++h)
      for (Index r : rows)
        check(c.head(h).position(r) == first.position(r), "TovaPolicy", "head ", h, " holds another token in row ", r,
              " than head 0 (heads of a layer out of step)");
    for (Index h = 0; h < c.n_heads(); ++h) c.head(h).evict(rows);
  }
};

}  // namespace policies
ENGRAM_NAMESPACE_END
