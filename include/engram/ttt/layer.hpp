// The TTT layer as a sequence mixer (ttt.md 1, 2, 4.1): projections, RoPE at position t mod b, the
// inner loop per head (dual form on whole aligned mini-batches, primal form elsewhere), post_norm,
// the optional GELU gate and o_proj.
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include "engram/nn/linear.hpp"
#include "engram/nn/norm.hpp"
#include "engram/ttt/causal_conv.hpp"
#include "engram/ttt/inner_loop.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// Intermediate tensors of one forward call (tests and debugging).
template <class T>
struct Trace {
  Tensor<T> XQ, XK, XV;  ///< [n, C]: after the convs (share_qk) and RoPE; XV is not rotated
  Tensor<T> lr;          ///< [H, n]: eta(x_t), without the token scale
  Tensor<T> inner_out;   ///< [n, C]: q + LN(f_res(q; W_t)) per head, before post_norm
};

/// TTT-Linear or TTT-MLP. Weights are immutable after loading; everything that changes while reading
/// a sequence lives in the State from make_state().
template <class T>
class Layer final : public SequenceLayer<T> {
 public:
  Config config;
  /// Fused input projection [n_proj, C], rows: q_proj (C), k_proj (C, unless share_qk), v_proj (C),
  /// g_proj (C, if use_gate), learnable_ttt_lr_weight (H). One GEMM for all of them.
  Linear<T> proj;
  Tensor<T> lr_bias;          ///< [H, 1] learnable_ttt_lr_bias
  Tensor<T> token_idx;        ///< [b] learnable_token_idx
  Tensor<T> ttt_norm_weight;  ///< [H, d] gamma of the inner LayerNorm
  Tensor<T> ttt_norm_bias;    ///< [H, d] beta
  Tensor<T> W1, b1, W2, b2;   ///< initial inner weights W0: [H, d, F], [H, F], and for MLP [H, F, d], [H, d]
  DepthwiseConv<T> conv_q, conv_k;  ///< share_qk: both read the shared xqk history
  Norm<T> post_norm;          ///< LayerNorm over C (weight and bias)
  Linear<T> o_proj;           ///< [C, C]
  /// Dual (default) or primal everywhere (the benchmark baseline). Not a weight: set it before use,
  /// never while another thread runs the layer.
  InnerForm form = InnerForm::dual;

  explicit Layer(const Config& c) : config(c) {
    c.validate();
    const Index C = c.d_model, H = c.n_heads, d = c.head_dim(), F = c.inner_dim();
    proj = Linear<T>(C, lr_col() + H, false);
    lr_bias = Tensor<T>({H, 1});
    token_idx = Tensor<T>({c.mini_batch});
    ttt_norm_weight = Tensor<T>({H, d});
    ttt_norm_weight.fill(T(1));
    ttt_norm_bias = Tensor<T>({H, d});
    W1 = Tensor<T>({H, d, F});
    b1 = Tensor<T>({H, F});
    if (c.kind == Kind::mlp) {
      W2 = Tensor<T>({H, F, d});
      b2 = Tensor<T>({H, d});
    }
    if (c.share_qk) {
      conv_q = DepthwiseConv<T>(C, c.conv_kernel);
      conv_k = DepthwiseConv<T>(C, c.conv_kernel);
    }
    post_norm = Norm<T>(NormKind::layer, C, c.post_norm_eps);
    o_proj = Linear<T>(C, C, false);
    // Positions restart at 0 in every mini-batch: one table of b rows serves every step. Angles are
    // computed in double (core's make_rope_table); ttt-lm-pytorch uses float32 angles, a difference of
    // ~1e-7 relative at positions below 16.
    std::vector<std::int64_t> positions(static_cast<std::size_t>(c.mini_batch));
    for (Index i = 0; i < c.mini_batch; ++i) positions[std::size_t(i)] = i;
    rope_ = make_rope_table<T>(rope_inv_freq(d, c.rope_theta), positions);
  }

  // Column offsets of the fused projection's output.
  Index q_col() const { return 0; }
  Index k_col() const { return config.share_qk ? -1 : config.d_model; }
  Index v_col() const { return config.share_qk ? config.d_model : 2 * config.d_model; }
  Index g_col() const { return config.use_gate ? v_col() + config.d_model : -1; }
  Index lr_col() const { return v_col() + config.d_model * (config.use_gate ? 2 : 1); }

  std::string_view kind() const override { return config.kind == Kind::linear ? "ttt_linear" : "ttt_mlp"; }
  Index dim() const override { return config.d_model; }

  std::unique_ptr<LayerState<T>> make_state() const override {
    auto s = std::make_unique<State<T>>();
    s->W1 = W1.copy();
    s->b1 = b1.copy();
    s->W1_grad = Tensor<T>(W1.shape());
    s->b1_grad = Tensor<T>(b1.shape());
    if (config.kind == Kind::mlp) {
      s->W2 = W2.copy();
      s->b2 = b2.copy();
      s->W2_grad = Tensor<T>(W2.shape());
      s->b2_grad = Tensor<T>(b2.shape());
    }
    if (config.share_qk) s->conv_qk = Tensor<T>({config.conv_kernel, config.d_model});
    return s;
  }

  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) override {
    visit_linear<T>("proj", proj, f);
    f("learnable_ttt_lr.bias", lr_bias);
    f("learnable_token_idx", token_idx);
    f("ttt_norm.weight", ttt_norm_weight);
    f("ttt_norm.bias", ttt_norm_bias);
    f("W1", W1);
    f("b1", b1);
    if (config.kind == Kind::mlp) {
      f("W2", W2);
      f("b2", b2);
    }
    if (config.share_qk) {
      f("conv_q.weight", conv_q.weight);
      f("conv_q.bias", conv_q.bias);
      f("conv_k.weight", conv_k.weight);
      f("conv_k.bias", conv_k.bias);
    }
    f("post_norm.weight", post_norm.weight);
    f("post_norm.bias", post_norm.bias);
    visit_linear<T>("o_proj", o_proj, f);
  }

  void forward(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx) const override {
    forward_traced(x, y, state, ctx, nullptr);
  }

  /// forward() that also copies the intermediate tensors into `trace` when it is not null.
  void forward_traced(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx, Trace<T>* trace) const {
    const char* where = "ttt::Layer";
    const Index n = x.rows(), C = config.d_model, H = config.n_heads, d = config.head_dim(), b = config.mini_batch;
    auto* st = dynamic_cast<State<T>*>(state);
    check(st != nullptr, where, "needs its ttt::State (from make_state())");
    check(st->n_heads() == H && st->W1.dim(2) == config.inner_dim(), where, "state was made by a layer of another shape");
    check(ctx.workspace != nullptr, where, "StepContext has no workspace");
    check(n > 0, where, "empty input: a step needs at least one token");
    check_shape(x, -1, C, where, "input");
    check_shape(y, n, C, where, "output");
    // A non-finite input would poison the inner weights for the rest of the sequence: refuse it
    // before the state changes.
    for (Index t = 0; t < n; ++t)
      for (Index c = 0; c < C; ++c)
        check(std::isfinite(double(x(t, c))), where, "non-finite input at token ", st->position + t, ", channel ", c);

    // Workspace slots 3-5 (the block's MLP takes 2 in every step: sharing it would reallocate).
    Workspace<T>& ws = *ctx.workspace;
    // 1. All input projections in one GEMM: P [n, n_proj].
    View<T> P = ws.get(3, n, proj.out());
    // [n, C] target Y = V - K, preceded on the Mamba backbone by the conv outputs XQ, XK.
    View<T> QKY = ws.get(5, n, config.share_qk ? 3 * C : C);
    View<T> Y = QKY.middle_cols(QKY.cols() - C, C);
    proj.forward(x, P, ctx.flops);
    View<T> Q, K;
    if (config.share_qk) {
      // Mamba backbone: xqk = q_proj(x) feeds two separate causal convs with one shared history.
      Q = QKY.middle_cols(0, C);
      K = QKY.middle_cols(C, C);
      ConstView<T> xqk = P.middle_cols(q_col(), C);
      conv_q.forward(xqk, st->conv_qk.view(), Q, ctx.flops);
      conv_k.forward(xqk, st->conv_qk.view(), K, ctx.flops);
      push_history<T>(st->conv_qk.view(), xqk);
    } else {
      Q = P.middle_cols(q_col(), C);
      K = P.middle_cols(k_col(), C);
    }
    ConstView<T> V = P.middle_cols(v_col(), C);
    // 2. RoPE on Q and K at position t mod b: one call per run of positions inside a mini-batch.
    for (Index t = 0; t < n;) {
      const Index p = (st->position + t) % b, m = std::min(b - p, n - t);
      apply_rope<T>(Q.middle_rows(t, m), H, d, rope_, RopePairing::interleaved, p);
      apply_rope<T>(K.middle_rows(t, m), H, d, rope_, RopePairing::interleaved, p);
      t += m;
    }
    // 3. eta(x_t) = base_lr * sigmoid(x_t . w_h + c_h) / d, in place in P's gate columns: [n, H].
    View<T> lr = P.middle_cols(lr_col(), H);
    for (Index t = 0; t < n; ++t)
      for (Index h = 0; h < H; ++h) lr(t, h) += lr_bias(h, 0);
    sigmoid<T>(lr);
    for (Index t = 0; t < n; ++t) simd::scale(T(config.base_lr / double(d)), lr.row(t), H);
    // 4. Reconstruction target Y = V - K (rotated K).
    for (Index t = 0; t < n; ++t) {
      std::copy_n(V.row(t), C, Y.row(t));
      simd::axpy(T(-1), K.row(t), Y.row(t), C);
    }
    // 5. The inner loop, one head per task; O [n, C] receives the inner outputs.
    View<T> O = ws.get(4, n, C);
    run_inner<T>(config, form, Q, K, Y, lr, token_idx.data(), ttt_norm_weight, ttt_norm_bias, *st, O, ctx.flops);
    if (trace) {
      trace->XQ = Tensor<T>::from_view(Q);
      trace->XK = Tensor<T>::from_view(K);
      trace->XV = Tensor<T>::from_view(V);
      trace->lr = Tensor<T>({H, n});
      for (Index t = 0; t < n; ++t)
        for (Index h = 0; h < H; ++h) trace->lr(h, t) = lr(t, h);
      trace->inner_out = Tensor<T>::from_view(O);
    }
    // 6. Output path: post_norm over C, optional gate gelu_tanh(g_proj(x)), o_proj.
    post_norm.forward(O, O);
    if (config.use_gate) {
      View<T> gate = P.middle_cols(g_col(), C);
      gelu_tanh<T>(gate);
      for (Index t = 0; t < n; ++t) simd::mul(O.row(t), gate.row(t), O.row(t), C);
    }
    o_proj.forward(O, y, ctx.flops);
    st->position += n;
  }

 private:
  RopeTable<T> rope_;  // cos/sin of positions 0 .. b-1
};

}  // namespace ttt
ENGRAM_NAMESPACE_END
