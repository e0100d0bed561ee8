// Self-attention branch: fused QKV projection, RoPE, KV cache append, fused attention (with the
// cache policy's probability sink), output projection.
#pragma once

#include <vector>

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
  Linear<T> qkv;  ///< [(H + 2 Hkv) * d, d_model]: rows q (head-major), then k, then v
  Linear<T> out;  ///< [d_model, H * d]

  SelfAttention() = default;
  explicit SelfAttention(const ModelConfig& c)
      : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim), positions(c.positions), pairing(c.rope_pairing),
        qkv(c.d_model, c.qkv_dim(), c.qkv_bias), out(c.n_heads * c.head_dim, c.d_model, c.out_bias) {}

  std::string_view kind() const override { return "attention"; }
  Index dim() const override { return out.out(); }
  std::unique_ptr<LayerState<T>> make_state() const override {
    return std::make_unique<AttentionState<T>>(LayerCache<T>(n_kv_heads, head_dim));
  }

  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) override {
    visit_linear<T>("qkv", qkv, f);
    visit_linear<T>("out", out, f);
  }

  void forward(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx) const override {
    check(state && state->kv_cache(), "SelfAttention", "needs its AttentionState");
    LayerCache<T>& cache = *state->kv_cache();
    const Index n = x.rows(), qd = n_heads * head_dim, kd = n_kv_heads * head_dim;
    View<T> proj = ctx.workspace->get(3, n, qkv.out());
    qkv.forward(x, proj, ctx.flops);
    View<T> q = proj.middle_cols(0, qd), k = proj.middle_cols(qd, kd), v = proj.middle_cols(qd + kd, kd);
    if (positions == PositionKind::rope) {
      check(ctx.rope != nullptr, "SelfAttention", "RoPE layer called without a rotation table");
      apply_rope<T>(q, n_heads, head_dim, *ctx.rope, pairing);
      apply_rope<T>(k, n_kv_heads, head_dim, *ctx.rope, pairing);
    }
    cache.append(k, v, ctx.positions);

    // Views of every head's keys and values; reused per thread, so a warm decode step allocates nothing here.
    thread_local std::vector<ConstView<T>> keys, values;
    keys.clear(), values.clear();
    for (Index h = 0; h < n_kv_heads; ++h) keys.push_back(cache.head(h).keys()), values.push_back(cache.head(h).values());
    View<T> attn = ctx.workspace->get(4, n, qd);
    AttentionInput<T> in;
    in.q = q;
    in.k = keys;
    in.v = values;
    in.out = attn;
    in.n_heads = n_heads;
    in.head_dim = head_dim;
    in.mask = ctx.mask;
    in.custom_mask = ctx.custom_mask;
    const StepInfo step{n, ctx.tokens_seen + n, ctx.flops};
    if (ctx.policy && ctx.policy->needs_attention()) in.sink = ctx.policy->sink(ctx.attention_layer, cache, ctx.policy_state, step);
    in.sink_phase = ctx.tokens_seen % kSinkRows;
    attention<T>(in);
    if (ctx.flops) {
      double pairs = 0;
      for (Index h = 0; h < n_kv_heads; ++h) pairs += visible_pairs(in, h);
      const double per_product = flops::attention_product(pairs * double(n_heads / n_kv_heads), head_dim);
      // Streaming exact probabilities to a policy recomputes Q K^T once: count it.
      ctx.flops->add(FlopCategory::attention_scores, in.sink ? 2 * per_product : per_product);
      ctx.flops->add(FlopCategory::attention_values, per_product);
    }
    out.forward(attn, y, ctx.flops);
    if (ctx.policy) ctx.policy->after_layer(ctx.attention_layer, cache, ctx.policy_state, step);
  }
};

ENGRAM_NAMESPACE_END
