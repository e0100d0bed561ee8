// Policies that keep a window of the most recent tokens: Recency, and StreamingLLM (Xiao et al.
// 2023, arXiv 2309.17453), which adds the first tokens as attention sinks and re-indexes positions
// inside the cache.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engram/core/ops.hpp"
#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// Recency: keep the most recent tokens only.
template <class T>
class RecencyPolicy final : public detail::BudgetPolicy<T> {
 public:
  explicit RecencyPolicy(Budget b) : detail::BudgetPolicy<T>(b, "RecencyPolicy") {}
  std::string name() const override { return "recency"; }
  void after_layer(Index, LayerCache<T>& c, PolicyState*, const StepInfo& step) const override {
    this->trim_heads(c, step, [](TokenTable<T>& t, Index excess) { detail::evict_oldest(t, excess, [](std::int64_t) { return true; }); });
  }
};

namespace detail {
// Per layer and KV head: the sink keys as they were first cached (rotated at their own position),
// the rows holding them and the shift their cached copies are rotated by.
template <class T>
class StreamingState final : public PolicyState {
 public:
  struct Head {
    Tensor<T> original;          // [sinks, d]
    std::vector<Index> rows;     // row of sink s in the table (-1: not seen yet)
    std::int64_t shift = 0;      // the cached sink keys are rotated to position s + shift
  };
  StreamingState(Index n_layers, Index n_heads) {
    for (Index l = 0; l < n_layers; ++l) layers.emplace_back(static_cast<std::size_t>(n_heads));
  }
  std::unique_ptr<PolicyState> clone() const override {
    auto s = std::make_unique<StreamingState>(0, 0);
    for (const auto& layer : layers) {
      s->layers.emplace_back();
      for (const Head& h : layer) s->layers.back().push_back(Head{h.original.copy(), h.rows, h.shift});
    }
    return s;
  }
  std::size_t bytes() const override {
    std::size_t b = 0;
    for (const auto& layer : layers)
      for (const Head& h : layer) b += h.original.bytes() + h.rows.size() * sizeof(Index);
    return b;
  }
  std::vector<std::vector<Head>> layers;
};
}  // namespace detail

/// StreamingLLM: keep the first `sinks` tokens of the sequence (attention sinks) and the most
/// recent ones, up to the budget. As in the paper, positions are re-indexed inside the cache: the
/// cached tokens get contiguous positions (sinks 0 .. sinks - 1, then the window), so the distances
/// the model sees never exceed the budget and it stays sane beyond its trained context.
///
/// How: keys stay cached rotated at their absolute positions. The window is a contiguous run of
/// positions that ends at the current query, so query-to-window distances are already the
/// re-indexed ones; only the sinks are off, by the number of tokens evicted so far (`shift`). After
/// each eviction the sink keys are re-rotated from their original cached copies to position
/// s + shift (RoPE rotations compose: R(s + shift) = R(shift) R(s)). That is O(sinks x head_dim)
/// per step, where rotating every key at attention time (keys stored before RoPE, as the paper's
/// code does) or re-rotating every kept key on eviction (kvpress's KeyRerotationPress) is
/// O(tokens x head_dim) per step. Layers without RoPE (learned positions) are not re-indexed.
///
/// A ratio budget keeps at least the sinks and one recent token.
template <class T>
class StreamingPolicy final : public detail::BudgetPolicy<T> {
 public:
  explicit StreamingPolicy(Budget b, Index sinks = 4) : detail::BudgetPolicy<T>(b, "StreamingPolicy"), sinks_(sinks) {
    check(sinks >= 0, "StreamingPolicy", "sink count must be >= 0, got ", sinks);
    check(b.tokens == 0 || b.tokens > sinks, "StreamingPolicy", "a budget of ", b.tokens, " tokens leaves no room for a window after ",
          sinks, " sinks");
  }
  std::string name() const override { return "streaming"; }
  Index sinks() const { return sinks_; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index n_heads) const override {
    return std::make_unique<detail::StreamingState<T>>(n_layers, n_heads);
  }

  void after_layer(Index layer, LayerCache<T>& c, PolicyState* state, const StepInfo& step) const override {
    auto& heads = static_cast<detail::StreamingState<T>*>(state)->layers.at(std::size_t(layer));
    const Index budget = std::max(this->budget_.allowed(step.tokens_seen), sinks_ + 1);
    for (Index h = 0; h < c.n_heads(); ++h) {
      TokenTable<T>& t = c.head(h);
      auto& head = heads.at(std::size_t(h));
      capture_sinks(t, head, step);
      if (t.size() > budget)
        detail::evict_oldest(t, t.size() - budget, [&](std::int64_t p) { return p >= std::int64_t(sinks_); });
      if (c.rotation.rope()) rerotate_sinks(t, head, c.rotation, std::int64_t(step.tokens_seen) - std::int64_t(t.size()));
    }
  }

 private:
  // Keeps a copy of every sink key the step brought (the step's tokens are the last n_new rows).
  void capture_sinks(const TokenTable<T>& t, typename detail::StreamingState<T>::Head& head, const StepInfo& step) const {
    if (step.tokens_seen - step.n_new >= sinks_) return;
    if (head.original.empty()) {
      head.original = Tensor<T>({sinks_, t.head_dim()});
      head.rows.assign(std::size_t(sinks_), -1);
    }
    thread_local Tensor<T> scratch;  // a key as T, for a 16-bit cache
    for (Index i = t.size() - step.n_new; i < t.size(); ++i) {
      const std::int64_t p = t.position(i);
      if (p >= std::int64_t(sinks_)) continue;
      std::copy_n(t.key_rows(i, 1, scratch).row(0), t.head_dim(), head.original.row(Index(p)));
      head.rows[std::size_t(p)] = i;
    }
  }

  // Rotates the cached sink keys to positions s + shift.
  void rerotate_sinks(TokenTable<T>& t, typename detail::StreamingState<T>::Head& head, const KeyRotation& rot,
                      std::int64_t shift) const {
    if (shift == head.shift || head.rows.empty()) return;
    thread_local RopeTable<T> table;
    const std::int64_t positions[1] = {shift};
    fill_rope_table<T>(table, rot.inv_freq, positions);
    const Index d = t.head_dim();
    thread_local Tensor<T> key;
    if (key.cols() != d) key = Tensor<T>({1, d});
    for (Index s = 0; s < sinks_; ++s) {
      Index& r = head.rows[std::size_t(s)];
      if (r < 0) continue;
      if (r >= t.size() || t.position(r) != s) {  // slot reuse moved it: find it again
        r = -1;
        for (Index i = 0; i < t.size() && r < 0; ++i)
          if (t.position(i) == s) r = i;
        check(r >= 0, "StreamingPolicy", "sink token ", s, " is no longer cached");
      }
      // A copy of the original, rotated, then stored (rounded again for a 16-bit cache).
      std::copy_n(head.original.row(s), d, key.row(0));
      apply_rope<T>(key.view(), 1, d, table, rot.pairing);
      t.set_key_row(r, key.row(0));
    }
    head.shift = shift;
  }

  Index sinks_;
};

}  // namespace policies
ENGRAM_NAMESPACE_END
