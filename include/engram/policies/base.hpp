// What the baseline policies share: budgets per head, selection of the tokens to evict by score
// and position (rows are in no particular order: evictions reuse slots), and a probability sink
// that sums attention into a per-token column.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engram/nn/cache_policy.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {
namespace detail {

// The `k` rows of `t` with the lowest score among those `eligible(i)` admits (fewer when fewer are
// eligible; ties: the newer token goes first, so the older stays), in no particular order. score(i)
// and eligible(i) take row indices. O(size): one linear scan when k == 1 (a decode step), a
// selection otherwise. The span lives until the next call on this thread.
template <class T, class Score, class Eligible>
std::span<const Index> select_lowest(const TokenTable<T>& t, Index k, const Score& score, const Eligible& eligible) {
  thread_local std::vector<Index> rows;
  rows.clear();
  if (k <= 0) return {};
  const auto before = [&](Index a, Index b) {  // a is evicted before b
    const auto sa = score(a), sb = score(b);
    return sa < sb || (sa == sb && t.position(a) > t.position(b));
  };
  const Index n = t.size();
  if (k == 1) {
    Index worst = -1;
    for (Index i = 0; i < n; ++i)
      if (eligible(i) && (worst < 0 || before(i, worst))) worst = i;
    if (worst >= 0) rows.push_back(worst);
    return rows;
  }
  for (Index i = 0; i < n; ++i)
    if (eligible(i)) rows.push_back(i);
  k = std::min(k, Index(rows.size()));
  if (k == 0) return {};
  std::nth_element(rows.begin(), rows.begin() + (k - 1), rows.end(), before);
  rows.resize(std::size_t(k));
  return rows;
}

// Evicts what select_lowest() selects, every column at once.
template <class T, class Score, class Eligible>
void evict_lowest(TokenTable<T>& t, Index k, const Score& score, const Eligible& eligible) {
  t.evict(select_lowest(t, k, score, eligible));
}

// The same for a score that is a function of the position only (Recency, StreamingLLM): evicts the
// k lowest positions that eligible(position) admits.
template <class T, class Eligible>
void evict_oldest(TokenTable<T>& t, Index k, const Eligible& eligible_position) {
  evict_lowest(t, k, [&](Index i) { return t.position(i); }, [&](Index i) { return eligible_position(t.position(i)); });
}

// Base of the budgeted policies: the budget, and the per-head trim of every head holding more than
// it allows after this step.
template <class T>
class BudgetPolicy : public CachePolicy<T> {
 public:
  BudgetPolicy(Budget budget, const char* who) : budget_(budget) {
    check(budget.limited(), who, "needs a token or ratio budget (e.g. Budget::of_tokens(2048) or Budget::of_ratio(0.25))");
  }
  const Budget& budget() const { return budget_; }

 protected:
  // Calls evict(table, excess) for every head holding more than the budget allows.
  template <class F>
  void trim_heads(LayerCache<T>& c, const StepInfo& step, const F& evict) const {
    const Index budget = budget_.allowed(step.tokens_seen);
    for (Index h = 0; h < c.n_heads(); ++h) {
      TokenTable<T>& t = c.head(h);
      if (t.size() > budget) evict(t, t.size() - budget);
    }
  }
  Budget budget_;
};

// Sums every query's probabilities (from absolute query index `first_query` on) into the one-wide
// column `column` of type Acc, or, with last_only, keeps only the probabilities of the step's last
// query. Acc = double for H2O, whose sums over 1e5+ queries lose their increments in float.
template <class T, class Acc>
class ColumnSink final : public ProbabilitySink<T> {
 public:
  LayerCache<T>* cache = nullptr;
  Index column = -1;
  Index step_start = 0, first_query = 0;
  bool last_only = false;
  void consume(Index kv_head, Index q_begin, Index k_begin, ConstView<T> probs) override {
    View<Acc> col = cache->head(kv_head).template column<Acc>(column);
    for (Index r = 0; r < probs.rows(); ++r) {
      if (step_start + q_begin + r < first_query) continue;
      for (Index j = 0; j < probs.cols(); ++j) {
        Acc& c = col(k_begin + j, 0);
        c = last_only ? Acc(probs(r, j)) : c + Acc(probs(r, j));
      }
    }
  }
};

// One sink per attention layer, re-pointed at its cache every step.
template <class T, class Acc>
class SinkState final : public PolicyState {
 public:
  explicit SinkState(Index n_layers) : sinks(static_cast<std::size_t>(n_layers)) {}
  std::unique_ptr<PolicyState> clone() const override { return std::make_unique<SinkState>(Index(sinks.size())); }
  std::vector<ColumnSink<T, Acc>> sinks;
};

// Base of the budgeted policies that score tokens by the attention they receive: one per-token
// column of Acc fed by a ColumnSink per layer.
template <class T, class Acc>
class AttentionColumnPolicy : public BudgetPolicy<T> {
 public:
  AttentionColumnPolicy(Budget budget, const char* who, const char* column) : BudgetPolicy<T>(budget, who), column_(column) {}
  bool needs_attention() const override { return true; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index) const override {
    return std::make_unique<SinkState<T, Acc>>(n_layers);
  }
  void attach(LayerCache<T>& c) const override { c.template add_column<Acc>(column_, 1); }
  /// Id of the policy's column in a table of a cache it is attached to.
  Index column_id(const TokenTable<T>& t) const { return t.column_id(column_); }

 protected:
  // Points this layer's sink at its cache for the current step.
  ColumnSink<T, Acc>* column_sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step, Index first_query,
                                  bool last_only) const {
    auto& s = static_cast<SinkState<T, Acc>*>(st)->sinks.at(std::size_t(layer));
    s.cache = &c, s.column = c.head(0).column_id(column_), s.step_start = step.tokens_seen - step.n_new;
    s.first_query = first_query, s.last_only = last_only;
    return &s;
  }
  void clear_column(LayerCache<T>& c) const {
    for (Index h = 0; h < c.n_heads(); ++h) {
      View<Acc> col = c.head(h).template column<Acc>(column_id(c.head(h)));
      for (Index i = 0; i < col.rows(); ++i) col(i, 0) = Acc(0);
    }
  }
  const char* column_;
};

}  // namespace detail
}  // namespace policies
ENGRAM_NAMESPACE_END
