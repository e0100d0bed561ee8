// The baseline eviction policies beside NAMM, all behind CachePolicy with a token or ratio budget:
// H2O, L2/KNorm, StreamingLLM, SnapKV, TOVA and Recency.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "engram/namm/config.hpp"
#include "engram/core/simd.hpp"
#include "engram/nn/cache_policy.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

namespace detail {
// Ascending indices of the `keep` highest-scoring of `candidates` (ascending themselves; ties: older
// first), merged with the always-kept indices. O(n): a selection, not a sort, since most policies
// run this for every decoded token.
template <class S>
std::vector<Index> keep_best(const std::vector<Index>& candidates, Index keep, const S& score, const std::vector<Index>& always) {
  keep = std::clamp<Index>(keep, 0, Index(candidates.size()));
  std::vector<Index> order = candidates;
  std::nth_element(order.begin(), order.begin() + keep, order.end(), [&](Index a, Index b) {
    const auto sa = score(a), sb = score(b);
    return sa > sb || (sa == sb && a < b);
  });
  std::vector<Index> kept(order.begin(), order.begin() + keep);
  kept.insert(kept.end(), always.begin(), always.end());
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
  return kept;
}
template <class T>
void clear_column(LayerCache<T>& c, const char* name) {
  for (Index h = 0; h < c.n_heads(); ++h) {
    auto col = c.head(h).column(c.head(h).column_id(name));
    for (Index i = 0; i < col.rows(); ++i) col(i, 0) = T(0);
  }
}
inline std::vector<Index> range(Index begin, Index end) {
  std::vector<Index> r;
  for (Index i = begin; i < end; ++i) r.push_back(i);
  return r;
}

// A sink per attention layer, re-pointed at its cache every step.
template <class T, class Sink>
class SinkState final : public PolicyState {
 public:
  explicit SinkState(Index n_layers) : sinks(static_cast<std::size_t>(n_layers)) {}
  std::unique_ptr<PolicyState> clone() const override { return std::make_unique<SinkState>(Index(sinks.size())); }
  std::vector<Sink> sinks;
};

// Adds every query's probabilities into one per-token column (H2O's accumulated attention, SnapKV's
// observation-window scores) or keeps only the last query's (TOVA, which clears the column first:
// keys a tile does not deliver have probability 0). Queries before `first_query` (absolute index)
// are ignored.
template <class T>
class ColumnSink final : public ProbabilitySink<T> {
 public:
  LayerCache<T>* cache = nullptr;
  const char* column = nullptr;
  Index step_start = 0, first_query = 0;
  bool last_only = false;
  void consume(Index kv_head, Index q_begin, Index k_begin, ConstView<T> probs) override {
    TokenTable<T>& t = cache->head(kv_head);
    View<T> col = t.column(t.column_id(column));
    for (Index r = 0; r < probs.rows(); ++r) {
      if (step_start + q_begin + r < first_query) continue;
      for (Index j = 0; j < probs.cols(); ++j) col(k_begin + j, 0) = last_only ? probs(r, j) : col(k_begin + j, 0) + probs(r, j);
    }
  }
};

// Base of the budgeted policies.
template <class T>
class BudgetPolicy : public CachePolicy<T> {
 public:
  explicit BudgetPolicy(Budget budget) : budget_(budget) {
    check(budget.limited(), "cache policy", "a baseline policy needs a token or ratio budget");
  }
  const Budget& budget() const { return budget_; }

 protected:
  // Every head holding more tokens than the budget allows after this step keeps
  // keep(table, n, budget): ascending indices.
  template <class F>
  void trim_heads(LayerCache<T>& c, const StepInfo& step, F keep) const {
    const Index budget = budget_.allowed(step.tokens_seen);
    for (Index h = 0; h < c.n_heads(); ++h) {
      TokenTable<T>& t = c.head(h);
      if (t.size() > budget) t.gather(keep(t, t.size(), budget));
    }
  }
  Budget budget_;
};

// Base of the budgeted policies that score tokens by attention: one per-token column fed by a
// ColumnSink per layer.
template <class T>
class AttentionColumnPolicy : public BudgetPolicy<T> {
 public:
  AttentionColumnPolicy(Budget budget, const char* column) : BudgetPolicy<T>(budget), column_(column) {}
  bool needs_attention() const override { return true; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index) const override {
    return std::make_unique<SinkState<T, ColumnSink<T>>>(n_layers);
  }
  void attach(LayerCache<T>& c) const override { c.add_column(column_, 1); }

 protected:
  // Points this layer's sink at its cache for the current step.
  ColumnSink<T>* column_sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step, Index first_query,
                             bool last_only) const {
    auto& s = static_cast<SinkState<T, ColumnSink<T>>*>(st)->sinks.at(std::size_t(layer));
    s.cache = &c, s.column = column_, s.step_start = step.tokens_seen - step.n_new;
    s.first_query = first_query, s.last_only = last_only;
    return &s;
  }
  const char* column_;
};
}  // namespace detail

/// Heavy-Hitter Oracle (Zhang et al. 2023): per head, keep the most recent half of the budget and
/// the tokens with the largest attention accumulated over every query so far.
template <class T>
class H2OPolicy final : public detail::AttentionColumnPolicy<T> {
 public:
  static constexpr const char* kColumn = "h2o.accumulated";
  explicit H2OPolicy(Budget b, double recent_fraction = 0.5)
      : detail::AttentionColumnPolicy<T>(b, kColumn), recent_fraction_(recent_fraction) {
    check(recent_fraction >= 0 && recent_fraction <= 1, "H2OPolicy", "recent_fraction must be in [0, 1], got ", recent_fraction);
  }
  std::string name() const override { return "h2o"; }
  ProbabilitySink<T>* sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step) const override {
    return this->column_sink(layer, c, st, step, 0, false);
  }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    this->trim_heads(c, step, [&](const TokenTable<T>& t, Index n, Index budget) {
      const Index recent = Index(std::floor(recent_fraction_ * double(budget)));
      const auto acc = t.column(t.column_id(kColumn));
      return detail::keep_best(detail::range(0, n - recent), budget - recent, [&](Index i) { return acc(i, 0); },
                               detail::range(n - recent, n));
    });
  }

 private:
  double recent_fraction_;
};

/// L2 norm (Devoto et al. 2024, "KNorm"): keep the tokens whose keys have the lowest L2 norm. The
/// newest token is always kept (a decode-time policy must not drop the key the next query needs most).
template <class T>
class KNormPolicy final : public detail::BudgetPolicy<T> {
 public:
  using detail::BudgetPolicy<T>::BudgetPolicy;
  std::string name() const override { return "knorm"; }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    this->trim_heads(c, step, [](const TokenTable<T>& t, Index n, Index budget) {
      const auto k = t.keys();
      return detail::keep_best(detail::range(0, n - 1), budget - 1, [&](Index i) { return -simd::dot(k.row(i), k.row(i), k.cols()); },
                               {n - 1});
    });
  }
};

/// StreamingLLM (Xiao et al. 2023): the first `sinks` tokens plus the most recent ones.
template <class T>
class StreamingPolicy final : public detail::BudgetPolicy<T> {
 public:
  explicit StreamingPolicy(Budget b, Index sinks = 4) : detail::BudgetPolicy<T>(b), sinks_(sinks) {
    check(sinks >= 0, "StreamingPolicy", "sink count must be >= 0, got ", sinks);
  }
  std::string name() const override { return "streaming"; }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    this->trim_heads(c, step, [&](const TokenTable<T>&, Index n, Index budget) {
      const Index first = std::min(sinks_, budget);
      std::vector<Index> kept = detail::range(0, first);
      const auto recent = detail::range(n - (budget - first), n);
      kept.insert(kept.end(), recent.begin(), recent.end());
      return kept;
    });
  }

 private:
  Index sinks_;
};

/// SnapKV (Li et al. 2024): at the end of a multi-token step (the prompt), score earlier tokens by the
/// attention of the step's last `window` queries, smoothed by average pooling (kernel `pool`, as
/// kvpress), keep the best plus the window. Single-token decode steps do not compress.
template <class T>
class SnapKVPolicy final : public detail::AttentionColumnPolicy<T> {
 public:
  static constexpr const char* kColumn = "snapkv.window_attention";
  explicit SnapKVPolicy(Budget b, Index window = 32, Index pool = 5)
      : detail::AttentionColumnPolicy<T>(b, kColumn), window_(window), pool_(pool) {
    check(window > 0 && pool > 0 && pool % 2 == 1, "SnapKVPolicy", "window must be positive and pool a positive odd size, got ",
          window, " and ", pool);
  }
  std::string name() const override { return "snapkv"; }
  ProbabilitySink<T>* sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step) const override {
    if (step.n_new < 2) return nullptr;  // decode steps: full speed, no scores
    detail::clear_column(c, kColumn);
    return this->column_sink(layer, c, st, step, step.tokens_seen - std::min(window_, step.n_new), false);
  }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    if (step.n_new < 2) return;
    const Index window = std::min(window_, step.n_new);
    this->trim_heads(c, step, [&](const TokenTable<T>& t, Index n, Index budget) {
      const Index prefix = n - window;
      const auto col = t.column(t.column_id(kColumn));
      std::vector<T> pooled(static_cast<std::size_t>(prefix));
      for (Index i = 0; i < prefix; ++i) {  // average pooling with zero padding, like avg_pool1d
        T sum = 0;
        for (Index j = i - pool_ / 2; j <= i + pool_ / 2; ++j) sum += (j >= 0 && j < prefix) ? col(j, 0) : T(0);
        pooled[std::size_t(i)] = sum / T(pool_);
      }
      return detail::keep_best(detail::range(0, prefix), budget - window, [&](Index i) { return pooled[std::size_t(i)]; },
                               detail::range(prefix, n));
    });
  }

 private:
  Index window_, pool_;
};

/// TOVA (Oren et al. 2024): while over budget, drop the tokens the current (last) query attends to
/// least, averaged over the layer's heads; every head drops the same tokens.
template <class T>
class TovaPolicy final : public detail::AttentionColumnPolicy<T> {
 public:
  static constexpr const char* kColumn = "tova.last_attention";
  explicit TovaPolicy(Budget b) : detail::AttentionColumnPolicy<T>(b, kColumn) {}
  std::string name() const override { return "tova"; }
  ProbabilitySink<T>* sink(Index layer, LayerCache<T>& c, PolicyState* st, const StepInfo& step) const override {
    detail::clear_column(c, kColumn);
    return this->column_sink(layer, c, st, step, step.tokens_seen - 1, true);
  }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    const Index budget = this->budget_.allowed(step.tokens_seen);
    const Index n = c.head(0).size();
    for (Index h = 1; h < c.n_heads(); ++h) check(c.head(h).size() == n, "TovaPolicy", "heads of a layer out of step");
    if (n <= budget) return;
    std::vector<T> mean(static_cast<std::size_t>(n), T(0));
    for (Index h = 0; h < c.n_heads(); ++h) {
      const auto col = c.head(h).column(c.head(h).column_id(kColumn));
      for (Index i = 0; i < n; ++i) mean[std::size_t(i)] += col(i, 0);
    }
    const auto kept = detail::keep_best(detail::range(0, n), budget, [&](Index i) { return mean[std::size_t(i)]; }, {});
    for (Index h = 0; h < c.n_heads(); ++h) c.head(h).gather(kept);
  }
};

/// Recency: keep the most recent tokens only.
template <class T>
class RecencyPolicy final : public detail::BudgetPolicy<T> {
 public:
  using detail::BudgetPolicy<T>::BudgetPolicy;
  std::string name() const override { return "recency"; }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    this->trim_heads(c, step, [](const TokenTable<T>&, Index n, Index budget) { return detail::range(n - budget, n); });
  }
};

}  // namespace namm
ENGRAM_NAMESPACE_END
