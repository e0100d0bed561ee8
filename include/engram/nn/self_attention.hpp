// Self-attention branch: fused QKV projection, RoPE, KV cache append, fused attention (with the
// cache policy's probability sink), output projection; and its training forward and backward.
#pragma once

#include <vector>

#include "engram/core/attention_backward.hpp"
#include "engram/core/ops_backward.hpp"
#include "engram/nn/config.hpp"
#include "engram/nn/layer.hpp"
#include "engram/nn/linear.hpp"

ENGRAM_NAMESPACE_BEGIN

/// The KV cache of one attention layer as its per-sequence state.
template <class T>
class AttentionState final : public LayerState<T> {
 public:
  explicit AttentionState(LayerCache<T> c) : cache(std::move(c)) {}
  std::unique_ptr<LayerState<T>> clone() const override { return std::make_unique<AttentionState>(cache.copy()); }
  std::size_t bytes() const override { return cache.bytes(); }
  LayerCache<T>* kv_cache() override { return &cache; }
  LayerCache<T> cache;
};

template <class T>
class SelfAttention final : public SequenceLayer<T> {
 public:
  Index n_heads = 0, n_kv_heads = 0, head_dim = 0;
  PositionKind positions = PositionKind::rope;
  RopePairing pairing = RopePairing::rotate_half;
  Index window = 0;  ///< sliding window in keys (ModelConfig::sliding_window), 0: full causal attention
  Linear<T> qkv;  ///< [(H + 2 Hkv) * d, d_model]: rows q (head-major), then k, then v
  Linear<T> out;  ///< [d_model, H * d]

  SelfAttention() = default;
  explicit SelfAttention(const ModelConfig& c)
      : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim), positions(c.positions), pairing(c.rope_pairing),
        window(c.sliding_window), qkv(c.d_model, c.qkv_dim(), c.qkv_bias), out(c.n_heads * c.head_dim, c.d_model, c.out_bias) {}

  std::string_view kind() const override { return "attention"; }
  Index dim() const override { return out.out(); }
  std::unique_ptr<LayerState<T>> make_state() const override {
    return std::make_unique<AttentionState<T>>(LayerCache<T>(n_kv_heads, head_dim));
  }

  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) override {
    visit_linear<T>("qkv", qkv, f);
    visit_linear<T>("out", out, f);
  }
  void visit_linears(const std::function<void(const std::string&, Linear<T>&)>& f) override {
    f("qkv", qkv);
    f("out", out);
  }

  void forward(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx) const override {
    LayerCache<T>& cache = cache_of(state, ctx);
    const Index n = x.rows(), qd = n_heads * head_dim;
    View<T> proj = ctx.workspace->get(3, n, qkv.out());
    qkv.forward(x, proj, ctx.flops);
    View<T> attn = ctx.workspace->get(4, n, qd);
    attend(proj, attn, cache, ctx);
    out.forward(attn, y, ctx.flops);
    after_attention(cache, ctx, n);
  }

  /// The projections of every sequence in one product each (qkv and out stream their weights once
  /// for the batch); RoPE, the cache, the policy and attention per sequence, as forward() does.
  void forward_batch(ConstView<T> x, View<T> y, std::span<LayerState<T>* const> states, std::span<StepContext<T>* const> ctxs) const override {
    const Index B = x.rows(), qd = n_heads * head_dim;
    thread_local std::vector<LayerCache<T>*> caches;  // reused across steps
    caches.clear();
    for (Index b = 0; b < B; ++b) caches.push_back(&cache_of(states[std::size_t(b)], *ctxs[std::size_t(b)]));
    Workspace<T>& ws = *ctxs.front()->workspace;
    View<T> proj = ws.get(3, B, qkv.out()), attn = ws.get(4, B, qd);
    batched_rows<T>(ctxs, [&](StepContext<T>& c) { qkv.forward(x, proj, c.flops); });
    for (Index b = 0; b < B; ++b) attend(proj.middle_rows(b, 1), attn.middle_rows(b, 1), *caches[std::size_t(b)], *ctxs[std::size_t(b)]);
    batched_rows<T>(ctxs, [&](StepContext<T>& c) { out.forward(attn, y, c.flops); });
    for (Index b = 0; b < B; ++b) after_attention(*caches[std::size_t(b)], *ctxs[std::size_t(b)], 1);
  }

 private:
  LayerCache<T>& cache_of(LayerState<T>* state, const StepContext<T>& ctx) const {
    check(state && state->kv_cache(), "SelfAttention", "needs its AttentionState");
    // The kernel's window counts cache rows, and a policy's evictions leave rows out of position order.
    check(window == 0 || !ctx.policy, "SelfAttention", "a cache policy (", ctx.policy ? ctx.policy->name() : "", ") on a sliding-window layer (window ",
          window, ") is not supported: evictions reorder the cache rows the window is counted in");
    return *state->kv_cache();
  }

  // One sequence's rows: proj [n, qkv] (q, k, v; rotated in place) -> attn [n, H * d] against its
  // cache, which takes the step's keys and values first; the policy sees queries and probabilities.
  void attend(View<T> proj, View<T> attn, LayerCache<T>& cache, StepContext<T>& ctx) const {
    const Index n = proj.rows(), qd = n_heads * head_dim, kd = n_kv_heads * head_dim;
    View<T> q = proj.middle_cols(0, qd), k = proj.middle_cols(qd, kd), v = proj.middle_cols(qd + kd, kd);
    const StepInfo step{n, ctx.tokens_seen + n, ctx.flops};
    const bool policy_queries = ctx.policy && ctx.policy->needs_queries();
    View<T> raw_q = q;  // the queries before RoPE, for a policy that asks (slot 5: this layer's)
    if (policy_queries && positions == PositionKind::rope) {
      raw_q = ctx.workspace->get(5, n, qd);
      copy<T>(q, raw_q);
    }
    if (positions == PositionKind::rope) {
      check(ctx.rope != nullptr, "SelfAttention", "RoPE layer called without a rotation table");
      apply_rope<T>(q, n_heads, head_dim, *ctx.rope, pairing);
      apply_rope<T>(k, n_kv_heads, head_dim, *ctx.rope, pairing);
    }
    cache.append(k, v, ctx.positions);
    if (policy_queries) ctx.policy->queries(ctx.attention_layer, raw_q, q, cache, ctx.policy_state, step);

    // Views of every head's keys and values; reused per thread, so a warm decode step allocates nothing here.
    thread_local CacheViews<T> views;
    cache.views(views);
    AttentionInput<T> in;
    in.q = q;
    views.bind(in);
    in.out = attn;
    in.n_heads = n_heads;
    in.head_dim = head_dim;
    in.mask = ctx.mask;
    in.custom_mask = ctx.custom_mask;
    in.window = window;
    if (ctx.policy && ctx.policy->needs_attention()) in.sink = ctx.policy->sink(ctx.attention_layer, cache, ctx.policy_state, step);
    in.sink_phase = ctx.tokens_seen % kSinkRows;
    attention<T>(in);
    if (ctx.flops) {
      double pairs = 0;
      for (Index h = 0; h < n_kv_heads; ++h) pairs += visible_pairs(in, h);
      const double per_product = flops::attention_product(pairs * double(n_heads / n_kv_heads), head_dim);
      // Streaming exact probabilities to a policy recomputes Q K^T only past the strip limit.
      ctx.flops->add(FlopCategory::attention_scores, sink_score_passes(in) * per_product);
      ctx.flops->add(FlopCategory::attention_values, per_product);
    }
  }

  // After the layer's output: the policy's eviction, or the sliding window's.
  void after_attention(LayerCache<T>& cache, StepContext<T>& ctx, Index n) const {
    const StepInfo step{n, ctx.tokens_seen + n, ctx.flops};
    if (ctx.policy) ctx.policy->after_layer(ctx.attention_layer, cache, ctx.policy_state, step);
    else if (window > 0) drop_outside_window(cache);
  }

 public:
  // Saved: the input x [n, d_model], the projections after RoPE [n, qkv], the attention output
  // [n, H * d] and its log-sum-exp [n, H] (the fused backward recomputes the probabilities from it).
  void forward_train(ConstView<T> x, View<T> y, TrainContext<T>& ctx) const override {
    const Index n = x.rows(), qd = n_heads * head_dim;
    check(n == ctx.n_seqs * ctx.seq_len, "SelfAttention::forward_train", "expected ", ctx.n_seqs, " sequences of ", ctx.seq_len,
          " rows, got ", n, " rows");
    View<T> xs = ctx.tape->push(n, x.cols());
    copy<T>(x, xs);
    View<T> proj = ctx.tape->push(n, qkv.out());
    qkv.forward(x, proj, ctx.flops);
    if (positions == PositionKind::rope) {
      check(ctx.rope != nullptr && ctx.rope->size() >= ctx.seq_len, "SelfAttention::forward_train",
            "RoPE layer needs a rotation table of ", ctx.seq_len, " positions");
      for (Index b = 0; b < ctx.n_seqs; ++b) {
        View<T> rows = ctx.sequence(proj, b);
        apply_rope<T>(rows.middle_cols(0, qd), n_heads, head_dim, *ctx.rope, pairing, 0);
        apply_rope<T>(rows.middle_cols(qd, n_kv_heads * head_dim), n_kv_heads, head_dim, *ctx.rope, pairing, 0);
      }
    }
    View<T> attn = ctx.tape->push(n, qd);
    View<T> lse = ctx.tape->push(n, n_heads);
    std::vector<ConstView<T>> keys(static_cast<std::size_t>(n_kv_heads)), values(static_cast<std::size_t>(n_kv_heads));
    for (Index b = 0; b < ctx.n_seqs; ++b) {
      const ConstView<T> rows = ctx.sequence(ConstView<T>(proj), b);
      head_views(rows, keys, values);
      AttentionInput<T> in;
      in.q = rows.middle_cols(0, qd);
      in.k = keys;
      in.v = values;
      in.out = ctx.sequence(attn, b);
      in.lse = ctx.sequence(lse, b);
      in.n_heads = n_heads;
      in.head_dim = head_dim;
      in.mask = ctx.mask;
      in.custom_mask = ctx.custom_mask;
      in.window = window > 0 ? window : ctx.window;
      attention<T>(in);
      if (ctx.flops) count_attention_flops(in, *ctx.flops, 1.0);
    }
    out.forward(attn, y, ctx.flops);
  }

  void backward(ConstView<T> dy, View<T> dx, TrainContext<T>& ctx) const override {
    const Index n = dy.rows(), qd = n_heads * head_dim, kd = n_kv_heads * head_dim;
    const ConstView<T> lse = ctx.tape->pop(n, n_heads);
    const ConstView<T> attn = ctx.tape->pop(n, qd);
    const ConstView<T> proj = ctx.tape->pop(n, qkv.out());
    const ConstView<T> xs = ctx.tape->pop(n, dx.cols());
    View<T> d_attn = ctx.workspace->get(3, n, qd);
    out.backward(attn, dy, d_attn, ctx.grads, false, ctx.flops);
    View<T> d_proj = ctx.workspace->get(4, n, qkv.out());
    std::vector<ConstView<T>> keys(static_cast<std::size_t>(n_kv_heads)), values(static_cast<std::size_t>(n_kv_heads));
    std::vector<View<T>> dkeys(static_cast<std::size_t>(n_kv_heads)), dvalues(static_cast<std::size_t>(n_kv_heads));
    for (Index b = 0; b < ctx.n_seqs; ++b) {
      const ConstView<T> rows = ctx.sequence(proj, b);
      head_views(rows, keys, values);
      View<T> drows = ctx.sequence(d_proj, b);
      for (Index h = 0; h < n_kv_heads; ++h) {
        dkeys[std::size_t(h)] = drows.middle_cols(qd + h * head_dim, head_dim);
        dvalues[std::size_t(h)] = drows.middle_cols(qd + kd + h * head_dim, head_dim);
      }
      AttentionBackwardInput<T> in;
      in.q = rows.middle_cols(0, qd);
      in.k = keys;
      in.v = values;
      in.out = ctx.sequence(attn, b);
      in.lse = ctx.sequence(lse, b);
      in.dout = ctx.sequence(ConstView<T>(d_attn), b);
      in.dq = drows.middle_cols(0, qd);
      in.dk = dkeys;
      in.dv = dvalues;
      in.n_heads = n_heads;
      in.head_dim = head_dim;
      in.mask = ctx.mask;
      in.custom_mask = ctx.custom_mask;
      in.window = window > 0 ? window : ctx.window;
      attention_backward<T>(in);
      if (ctx.flops) {
        AttentionInput<T> shape;
        shape.q = in.q, shape.k = keys, shape.v = values, shape.n_heads = n_heads, shape.head_dim = head_dim;
        shape.mask = ctx.mask, shape.custom_mask = ctx.custom_mask, shape.window = in.window;
        count_attention_flops(shape, *ctx.flops, 2.0);  // the backward's dV, dP, dQ, dK (+ the recomputed S)
      }
      if (positions == PositionKind::rope) {
        apply_rope_backward<T>(drows.middle_cols(0, qd), n_heads, head_dim, *ctx.rope, pairing, 0);
        apply_rope_backward<T>(drows.middle_cols(qd, kd), n_kv_heads, head_dim, *ctx.rope, pairing, 0);
      }
    }
    qkv.backward(xs, d_proj, dx, ctx.grads, false, ctx.flops);
  }

 private:
  // A windowed model's future queries never see more than the last `window` keys: once the cache
  // holds twice that, the older rows go (amortised: one compaction per `window` tokens), so the
  // state stays bounded like a recurrent model's.
  void drop_outside_window(LayerCache<T>& cache) const {
    const Index n = cache.max_size();
    if (n < 2 * window) return;
    thread_local std::vector<Index> kept;
    kept.resize(std::size_t(window));
    for (Index i = 0; i < window; ++i) kept[std::size_t(i)] = n - window + i;
    for (Index h = 0; h < cache.n_heads(); ++h) cache.head(h).gather(kept);
  }

  // Views of each KV head's keys and values in rows of the fused projection [n, qkv].
  void head_views(ConstView<T> rows, std::vector<ConstView<T>>& keys, std::vector<ConstView<T>>& values) const {
    const Index qd = n_heads * head_dim, kd = n_kv_heads * head_dim;
    for (Index h = 0; h < n_kv_heads; ++h) {
      keys[std::size_t(h)] = rows.middle_cols(qd + h * head_dim, head_dim);
      values[std::size_t(h)] = rows.middle_cols(qd + kd + h * head_dim, head_dim);
    }
  }
  // `factor` x the forward's two products over the visible pairs.
  void count_attention_flops(const AttentionInput<T>& in, FlopCounter& flops, double factor) const {
    double pairs = 0;
    for (Index h = 0; h < n_kv_heads; ++h) pairs += visible_pairs(in, h);
    const double per_product = flops::attention_product(pairs * double(n_heads / n_kv_heads), head_dim);
    flops.add(FlopCategory::attention_scores, factor * per_product);
    flops.add(FlopCategory::attention_values, factor * per_product);
  }
};

ENGRAM_NAMESPACE_END
