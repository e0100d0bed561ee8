// Drives a cache policy on one hand-built attention layer, without a model: appends tokens, hands
// it the queries and a chosen probability matrix, runs its hooks in the decoder's order.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "engram/nn/cache_policy.hpp"
#include "test_util.hpp"

namespace engram::test {

struct PolicyLayer {
  const CachePolicy<float>& policy;
  LayerCache<float> cache;
  std::unique_ptr<PolicyState> state;
  Index seen = 0;

  PolicyLayer(const CachePolicy<float>& p, Index kv_heads, Index head_dim) : policy(p), cache(kv_heads, head_dim) {
    state = p.make_state(1, kv_heads);
    p.attach(cache);
  }

  /// One step of n tokens: keys and values [n, kv_heads * head_dim] (rotated as cached); optional
  /// queries before and after RoPE [n, heads * head_dim]; optional probabilities of the step's last
  /// m <= n queries [m, keys after the append], the same for every KV head, delivered to the sink
  /// in one tile per head.
  void step(ConstView<float> k, ConstView<float> v, const Tensor<float>* probs = nullptr, ConstView<float> raw_q = {},
            ConstView<float> rotated_q = {}) {
    const Index n = k.rows();
    std::vector<std::int64_t> pos;
    for (Index i = 0; i < n; ++i) pos.push_back(seen + i);
    cache.append(k, v, pos);
    seen += n;
    const StepInfo info{n, seen, nullptr};
    if (policy.needs_queries()) policy.queries(0, raw_q, rotated_q.rows() ? rotated_q : raw_q, cache, state.get(), info);
    if (policy.needs_attention() && probs)
      if (ProbabilitySink<float>* sink = policy.sink(0, cache, state.get(), info))
        for (Index h = 0; h < cache.n_heads(); ++h)
          sink->consume(h, n - probs->rows(), 0, probs->view()), sink->rows_done(h, n - probs->rows(), probs->rows());
    policy.after_layer(0, cache, state.get(), info);
    LayerCache<float>* c = &cache;
    policy.after_step(std::span<LayerCache<float>* const>(&c, 1), state.get(), info);
  }
  /// n tokens whose keys in every head are row i of `keys` (n x head_dim), values zero.
  void step_keys(const std::vector<std::vector<float>>& keys) {
    const Index n = Index(keys.size()), d = cache.head(0).head_dim(), h = cache.n_heads();
    Tensor<float> k({n, h * d}), v({n, h * d});
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < h; ++j)
        for (Index c = 0; c < d; ++c) k(i, j * d + c) = keys[std::size_t(i)][std::size_t(c)];
    step(k.view(), v.view());
  }
  void end_prompt() {
    LayerCache<float>* c = &cache;
    policy.end_prompt(std::span<LayerCache<float>* const>(&c, 1), state.get(), StepInfo{0, seen, nullptr});
  }
  /// Cached positions of a head, ascending.
  std::vector<Index> kept(Index head = 0) const {
    std::vector<Index> p;
    for (Index i = 0; i < cache.head(head).size(); ++i) p.push_back(Index(cache.head(head).position(i)));
    std::sort(p.begin(), p.end());
    return p;
  }
};

/// A probability matrix from rows of numbers.
inline Tensor<float> rows_of(const std::vector<std::vector<float>>& rows) {
  Tensor<float> t({Index(rows.size()), Index(rows[0].size())});
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t j = 0; j < rows[r].size(); ++j) t(Index(r), Index(j)) = rows[r][j];
  return t;
}

}  // namespace engram::test
