// H2O, the Heavy-Hitter Oracle (Zhang et al. 2023, arXiv 2306.14048): a recent window plus the
// tokens with the largest attention accumulated over every query so far.
#pragma once

#include <cmath>
#include <string>

#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// H2O: per KV head, after every step that leaves more tokens than the budget, keep the most
/// recent floor(recent_fraction * budget) tokens and, among the others, those whose accumulated
/// attention (the sum over every query so far of the probability it gave the token, averaged over
/// the GQA group) is largest; evict the rest (greedily, one step at a time, as the paper's decoding).
/// The sums are kept in double: in float, increments below 2^-24 of a sum are lost, which happens
/// after about 1e5 queries.
template <class T>
class H2OPolicy final : public detail::AttentionColumnPolicy<T, double> {
 public:
  static constexpr const char* kColumn = "h2o.accumulated";
  explicit H2OPolicy(Budget b, double recent_fraction = 0.5)
      : detail::AttentionColumnPolicy<T, double>(b, "H2OPolicy", kColumn), recent_fraction_(recent_fraction) {
    check(recent_fraction >= 0 && recent_fraction <= 1, "H2OPolicy", "recent_fraction must be in [0, 1], got ", recent_fraction);
  }
  std::string name() const override { return "h2o"; }
  ProbabilitySink<T>* sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step) const override {
    return this->column_sink(layer, c, st, step, 0, false);
  }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    const Index budget = this->budget_.allowed(step.tokens_seen);
    const auto recent = std::int64_t(std::floor(recent_fraction_ * double(budget)));
    const std::int64_t first_recent = std::int64_t(step.tokens_seen) - recent;
    this->trim_heads(c, step, [&](TokenTable<T>& t, Index excess) {
      const ConstView<double> acc = t.template column<double>(this->column_id(t));
      detail::evict_lowest(t, excess, [&](Index i) { return acc(i, 0); }, [&](Index i) { return t.position(i) < first_recent; });
    });
  }

 private:
  double recent_fraction_;
};

}  // namespace policies
ENGRAM_NAMESPACE_END
