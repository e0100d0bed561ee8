// SnapKV (Li et al. 2024, arXiv 2404.14469): once the prompt is read, score its tokens by the
// attention of the prompt's last tokens (the observation window: the question), smoothed by
// pooling, and keep the best of each KV head plus the window.
#pragma once

#include <algorithm>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "engram/core/flops.hpp"
#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

namespace detail {
// Per layer: the rotated queries of the last `window` tokens, a ring [window, n_heads * head_dim].
template <class T>
class WindowState final : public PolicyState {
 public:
  struct Ring {
    Tensor<T> q;
    Index filled = 0, next = 0;
  };
  explicit WindowState(Index n_layers) : layers(static_cast<std::size_t>(n_layers)) {}
  std::unique_ptr<PolicyState> clone() const override {
    auto s = std::make_unique<WindowState>(0);
    for (const Ring& r : layers) s->layers.push_back(Ring{r.q.copy(), r.filled, r.next});
    return s;
  }
  std::size_t bytes() const override {
    std::size_t b = 0;
    for (const Ring& r : layers) b += r.q.bytes();
    return b;
  }
  std::vector<Ring> layers;
};
}  // namespace detail

/// SnapKV. Compresses once per prompt, when the caller marks its end (Decoder::State::end_prompt();
/// nothing happens before, whatever the prefill chunking, and tokens read after it are appended
/// uncompressed, as in the paper, until the next end_prompt). Then, per layer, when the cache holds
/// more than the budget allows:
///  - the observation window is the last `window` tokens read (the question);
///  - the attention of the window's queries over the whole cache (causal within the window,
///    softmax over every key) is summed over the window's queries and averaged over each GQA group;
///  - the scores of the tokens before the window are average-pooled along positions (kernel
///    `pool`, zero padding, as avg_pool1d with count_include_pad);
///  - each KV head keeps the last min(window, budget) tokens and the budget - that many
///    best-pooled earlier tokens (ties: the older), never more than the budget.
/// Defaults: window 32, pool 5 (the authors' code, FasterDecoding/SnapKV). The window's queries are
/// kept per layer (window x n_heads x head_dim values); the attention is recomputed from them with
/// the fused kernel, so no probabilities are streamed while reading.
template <class T>
class SnapKVPolicy final : public detail::BudgetPolicy<T> {
 public:
  static constexpr const char* kColumn = "snapkv.window_attention";
  explicit SnapKVPolicy(Budget b, Index window = 32, Index pool = 5)
      : detail::BudgetPolicy<T>(b, "SnapKVPolicy"), window_(window), pool_(pool) {
    check(window > 0 && pool > 0 && pool % 2 == 1, "SnapKVPolicy", "window must be positive and pool a positive odd size, got ",
          window, " and ", pool);
  }
  std::string name() const override { return "snapkv"; }
  bool needs_queries() const override { return true; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index) const override {
    return std::make_unique<detail::WindowState<T>>(n_layers);
  }
  void attach(LayerCache<T>& c) const override { c.add_column(kColumn, 1); }

  void queries(Index layer, ConstView<T>, ConstView<T> rotated, LayerCache<T>&, PolicyState* state, const StepInfo&) const override {
    auto& ring = static_cast<detail::WindowState<T>*>(state)->layers.at(std::size_t(layer));
    if (ring.q.empty()) ring.q = Tensor<T>({window_, rotated.cols()});
    check(ring.q.cols() == rotated.cols(), "SnapKVPolicy", "queries of ", rotated.cols(), " columns, the window holds ", ring.q.cols());
    for (Index r = std::max<Index>(0, rotated.rows() - window_); r < rotated.rows(); ++r) {
      std::copy_n(rotated.row(r), rotated.cols(), ring.q.row(ring.next));
      ring.next = (ring.next + 1) % window_;
      ring.filled = std::min(ring.filled + 1, window_);
    }
  }

  void end_prompt(std::span<LayerCache<T>* const> caches, PolicyState* state, const StepInfo& step) const override {
    auto& rings = static_cast<detail::WindowState<T>*>(state)->layers;
    const Index budget = this->budget_.allowed(step.tokens_seen);
    for (std::size_t l = 0; l < caches.size(); ++l) {
      LayerCache<T>& c = *caches[l];
      const auto& ring = rings.at(l);
      if (c.max_size() <= budget || ring.filled == 0) continue;
      window_attention(c, ring, step);
      compress(c, std::min(ring.filled, step.tokens_seen), budget, step.tokens_seen);
    }
  }

 private:
  // Fills kColumn of every head with the summed attention of the window's queries.
  void window_attention(LayerCache<T>& c, const typename detail::WindowState<T>::Ring& ring, const StepInfo& step) const {
    const Index w = ring.filled, n = c.head(0).size(), d = c.head(0).head_dim();
    for (Index h = 1; h < c.n_heads(); ++h) check(c.head(h).size() == n, "SnapKVPolicy", "heads of a layer hold different counts");
    Tensor<T> q({w, ring.q.cols()}), out({w, ring.q.cols()});
    for (Index r = 0; r < w; ++r)  // oldest first
      std::copy_n(ring.q.row((ring.next - w + r + window_) % window_), q.cols(), q.row(r));
    // Causal by position (rows of the cache are in no particular order): query r is token
    // tokens_seen - w + r.
    Tensor<std::uint8_t> mask({w, n});
    const TokenTable<T>& t0 = c.head(0);
    for (Index h = 1; h < c.n_heads(); ++h)
      for (Index j = 0; j < n; ++j)
        check(c.head(h).position(j) == t0.position(j), "SnapKVPolicy", "heads of a layer hold their tokens in different rows");
    for (Index r = 0; r < w; ++r)
      for (Index j = 0; j < n; ++j) mask(r, j) = t0.position(j) <= std::int64_t(step.tokens_seen - w + r);
    CacheViews<T> views;
    c.views(views);
    detail::ColumnSink<T, T> sink;
    sink.cache = &c;
    sink.column = t0.column_id(kColumn);
    for (Index h = 0; h < c.n_heads(); ++h) {
      View<T> col = c.head(h).column(sink.column);
      for (Index i = 0; i < n; ++i) col(i, 0) = T(0);
    }
    AttentionInput<T> in;
    in.q = q.view();
    views.bind(in);
    in.out = out.view();
    in.n_heads = q.cols() / d;
    in.head_dim = d;
    in.mask = MaskKind::custom;
    in.custom_mask = mask.view();
    in.sink = &sink;
    attention<T>(in);
    if (step.flops) {
      double pairs = 0;
      for (Index h = 0; h < c.n_heads(); ++h) pairs += visible_pairs(in, h);
      const double product = flops::attention_product(pairs * double(in.n_heads / c.n_heads()), d);
      step.flops->add(FlopCategory::attention_scores, sink_score_passes(in) * product);
      step.flops->add(FlopCategory::attention_values, product);
    }
  }

  // Keeps, per head, the last min(w, budget) tokens and the best-pooled earlier ones.
  void compress(LayerCache<T>& c, Index w, Index budget, Index tokens_seen) const {
    const std::int64_t window_start = std::int64_t(tokens_seen - w);
    const std::int64_t kept_window_start = std::int64_t(tokens_seen - std::min(w, budget));
    const Index prefix_budget = budget - std::min(w, budget);
    thread_local std::vector<Index> order;
    thread_local std::vector<T> pooled;
    thread_local std::vector<Index> evicted;
    for (Index h = 0; h < c.n_heads(); ++h) {
      TokenTable<T>& t = c.head(h);
      const ConstView<T> col = t.column(t.column_id(kColumn));
      order.clear();
      for (Index i = 0; i < t.size(); ++i)
        if (t.position(i) < window_start) order.push_back(i);
      std::sort(order.begin(), order.end(), [&](Index a, Index b) { return t.position(a) < t.position(b); });
      pooled.assign(std::size_t(t.size()), T(0));
      const Index m = Index(order.size()), half = pool_ / 2;
      for (Index i = 0; i < m; ++i) {
        T sum = 0;
        for (Index j = std::max<Index>(0, i - half); j <= std::min(m - 1, i + half); ++j) sum += col(order[std::size_t(j)], 0);
        pooled[std::size_t(order[std::size_t(i)])] = sum / T(pool_);
      }
      const auto worst = detail::select_lowest(t, m - prefix_budget, [&](Index i) { return pooled[std::size_t(i)]; },
                                               [&](Index i) { return t.position(i) < window_start; });
      evicted.assign(worst.begin(), worst.end());
      for (Index i = 0; i < t.size(); ++i)  // window tokens beyond the budget (only when window > budget)
        if (t.position(i) >= window_start && t.position(i) < kept_window_start) evicted.push_back(i);
      t.evict(evicted);
    }
  }

  Index window_, pool_;
};

}  // namespace policies
ENGRAM_NAMESPACE_END
