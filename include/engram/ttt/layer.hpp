// The TTT layer as a sequence mixer (ttt.md 1, 2, 4.1): projections, RoPE at position t mod b, the
// inner loop per head (dual form on whole aligned mini-batches, primal form elsewhere), post_norm,
// the optional GELU gate and o_proj; and its training forward and backward through the inner loop.
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include "engram/core/finite.hpp"
#include "engram/nn/linear.hpp"
#include "engram/nn/norm.hpp"
#include "engram/ttt/causal_conv.hpp"
#include "engram/core/ops_backward.hpp"
#include "engram/ttt/inner_backward.hpp"

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
    // Positions restart at 0 in every mini-batch: one table of b rows serves every step. As in
    // ttt-lm-pytorch (RotaryEmbedding.forward), the frequencies, angles, cos and sin are float32
    // values whatever T is (double angles would move double-precision outputs ~2e-8 relative away
    // from the official module's); cos and sin are the correctly rounded float32 values (torch's
    // vectorised float32 cos/sin may differ from them by 1 ulp).
    rope_.cos = Tensor<T>({c.mini_batch, d / 2});
    rope_.sin = Tensor<T>({c.mini_batch, d / 2});
    for (Index i = 0; i < d / 2; ++i) {
      const float inv_freq = 1.0f / std::pow(float(c.rope_theta), float(2 * i) / float(d));
      for (Index p = 0; p < c.mini_batch; ++p) {
        const float angle = float(p) * inv_freq;
        rope_.cos(p, i) = T(float(std::cos(double(angle))));
        rope_.sin(p, i) = T(float(std::sin(double(angle))));
      }
    }
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
  /// The fused projection and o_proj (the inner model's W/b stay f32: they are the state's start).
  void visit_linears(const std::function<void(const std::string&, Linear<T>&)>& f) override {
    f("proj", proj);
    f("o_proj", o_proj);
  }

  void forward(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx) const override {
    forward_traced(x, y, state, ctx, nullptr);
  }

  /// forward() that also copies the intermediate tensors into `trace` when it is not null.
  void forward_traced(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx, Trace<T>* trace) const {
    const char* where = "ttt::Layer";
    const Index n = x.rows(), C = config.d_model, H = config.n_heads;
    check(n > 0, where, "empty input: a step needs at least one token");
    check_shape(x, -1, C, where, "input");
    check_shape(y, n, C, where, "output");
    State<T>* st = checked_state(state, ctx, where);
    check_input(x, *st, where);

    // Workspace slots 3-5 (the block's MLP takes 2 in every step: sharing it would reallocate).
    Workspace<T>& ws = *ctx.workspace;
    // 1. All input projections in one GEMM: P [n, n_proj].
    View<T> P = ws.get(3, n, proj.out());
    View<T> QKY = ws.get(5, n, qky_cols());
    proj.forward(x, P, ctx.flops);
    // 2-4. Convs, RoPE, eta, target.
    const Inputs in = prepare(P, QKY, st->conv_qk.view(), st->position, ctx.flops);
    if (config.share_qk) push_history<T>(st->conv_qk.view(), P.middle_cols(q_col(), C));
    // 5. The inner loop, one head per task; O [n, C] receives the inner outputs.
    View<T> O = ws.get(4, n, C);
    run_inner<T>(config, form, in.Q, in.K, in.Y, in.lr, token_idx.data(), ttt_norm_weight, ttt_norm_bias, *st, O, ctx.flops);
    if (trace) {
      trace->XQ = Tensor<T>::from_view(in.Q);
      trace->XK = Tensor<T>::from_view(in.K);
      trace->XV = Tensor<T>::from_view(in.V);
      trace->lr = Tensor<T>({H, n});
      for (Index t = 0; t < n; ++t)
        for (Index h = 0; h < H; ++h) trace->lr(h, t) = in.lr(t, h);
      trace->inner_out = Tensor<T>::from_view(O);
    }
    // 6. Output path, in place in O and the gate columns of P.
    output(O, gate_of(P), O, gate_of(P), y, ctx.flops);
    // NaN policy: the input is finite (checked above) and so are the weights (checked at load), so a
    // non-finite output means the inner state went non-finite: an Error naming the token (one pass).
    if (!all_finite<T>(y)) check_finite<T>(y, where, "the output: the inner state (W1, b1, W2, b2) went non-finite", st->position, "token");
    st->position += n;
  }

  /// One decode step of B sequences: row b of x [B, d_model] is the next token of the sequence
  /// whose state is states[b]. The input projections and o_proj run as one product each for the
  /// batch (their weights stream once, which is what a decode step is bound by); the convs, RoPE,
  /// the learning-rate gate and the inner loop run per sequence on its own state, at its own
  /// position in its mini-batch. Equals forward() on each row (bit for bit while the products take
  /// the few-rows kernel: up to 16 sequences).
  void forward_batch(ConstView<T> x, View<T> y, std::span<LayerState<T>* const> states, std::span<StepContext<T>* const> ctxs) const override {
    const char* where = "ttt::Layer::forward_batch";
    const Index B = x.rows(), C = config.d_model;
    check(B > 0, where, "empty batch: a step needs at least one sequence");
    check(Index(states.size()) == B && Index(ctxs.size()) == B, where, "expected one state and one context per row (", B, "), got ",
          states.size(), " states and ", ctxs.size(), " contexts");
    check_shape(x, -1, C, where, "input");
    check_shape(y, B, C, where, "output");
    thread_local std::vector<State<T>*> st;  // reused across steps
    st.clear();
    for (Index b = 0; b < B; ++b) {
      st.push_back(checked_state(states[std::size_t(b)], *ctxs[std::size_t(b)], where));
      check_input(x.middle_rows(b, 1), *st.back(), where);
    }
    Workspace<T>& ws = *ctxs.front()->workspace;
    View<T> P = ws.get(3, B, proj.out()), QKY = ws.get(5, B, qky_cols()), O = ws.get(4, B, C);
    batched_rows<T>(ctxs, [&](StepContext<T>& c) { proj.forward(x, P, c.flops); });
    for (Index b = 0; b < B; ++b) {
      State<T>& sb = *st[std::size_t(b)];
      FlopCounter* flops = ctxs[std::size_t(b)]->flops;
      View<T> Pb = P.middle_rows(b, 1);
      const Inputs in = prepare(Pb, QKY.middle_rows(b, 1), sb.conv_qk.view(), sb.position, flops);
      if (config.share_qk) push_history<T>(sb.conv_qk.view(), Pb.middle_cols(q_col(), C));
      run_inner<T>(config, form, in.Q, in.K, in.Y, in.lr, token_idx.data(), ttt_norm_weight, ttt_norm_bias, sb, O.middle_rows(b, 1), flops);
    }
    batched_rows<T>(ctxs, [&](StepContext<T>& c) { output(O, gate_of(P), O, gate_of(P), y, c.flops); });
    for (Index b = 0; b < B; ++b) {
      const ConstView<T> yb = y.middle_rows(b, 1);
      if (!all_finite<T>(yb))
        check_finite<T>(yb, where, "the output: the inner state (W1, b1, W2, b2) went non-finite", st[std::size_t(b)]->position, "token");
      ++st[std::size_t(b)]->position;
    }
  }

  /// Training forward over ctx.n_seqs sequences of ctx.seq_len rows, each from a fresh state; equals
  /// forward() on each (the same code, the inner loop through run_inner_train). Saves on the tape,
  /// in order: the input x [N, C], the projections P [N, n_proj] (RoPE applied, eta in the gate
  /// columns), QKY [N, C or 3C] (the conv outputs on the Mamba backbone, then the target Y), the
  /// inner outputs O [N, C] and the start weights of every mini-batch of every sequence and head
  /// (W1 [N_seg H d, F], b1 [N_seg H, F], and W2, b2 for TTT-MLP): memory O(N C + N H d F / b).
  void forward_train(ConstView<T> x, View<T> y, TrainContext<T>& ctx) const override {
    const char* where = "ttt::Layer::forward_train";
    const Index N = x.rows(), C = config.d_model, L = ctx.seq_len;
    check(ctx.tape != nullptr && ctx.workspace != nullptr, where, "TrainContext needs a tape and a workspace");
    check(L > 0 && N == ctx.n_seqs * L, where, "expected ", ctx.n_seqs, " sequences of ", L, " rows, got ", N, " rows");
    check_shape(x, -1, C, where, "input");
    check_shape(y, N, C, where, "output");
    Tape<T>& tape = *ctx.tape;
    copy<T>(x, tape.push(N, C));
    View<T> P = tape.push(N, proj.out());
    View<T> QKY = tape.push(N, qky_cols());
    View<T> O = tape.push(N, C);
    const Saved saved = push_saved(tape, ctx.n_seqs, L);
    proj.forward(x, P, ctx.flops);
    View<T> history = zero_history(*ctx.workspace, 3);
    const InnerWeights<T> W0 = initial_weights();
    for (Index s = 0; s < ctx.n_seqs; ++s) {
      const Inputs in = prepare(ctx.sequence(P, s), ctx.sequence(QKY, s), history, 0, ctx.flops);
      run_inner_train<T>(config, form, in.Q, in.K, in.Y, in.lr, token_idx.data(), ttt_norm_weight, ttt_norm_bias, W0,
                         saved.of(s), ctx.sequence(O, s), ctx.flops);
    }
    output(O, gate_of(P), ctx.workspace->get(3, N, C), config.use_gate ? ctx.workspace->get(4, N, C) : View<T>(), y, ctx.flops);
  }

  /// Backward of forward_train (ttt/inner_backward.hpp has the derivation of the inner loop's part).
  void backward(ConstView<T> dy, View<T> dx, TrainContext<T>& ctx) const override {
    const char* where = "ttt::Layer::backward";
    const Index N = dy.rows(), C = config.d_model, H = config.n_heads, d = config.head_dim(), F = config.inner_dim();
    const Index L = ctx.seq_len, b = config.mini_batch;
    check(ctx.tape != nullptr && ctx.workspace != nullptr, where, "TrainContext needs a tape and a workspace");
    check(L > 0 && N == ctx.n_seqs * L, where, "expected ", ctx.n_seqs, " sequences of ", L, " rows, got ", N, " rows");
    check_shape(dy, N, C, where, "output gradient");
    check_shape(dx, N, C, where, "input gradient");
    Tape<T>& tape = *ctx.tape;
    Workspace<T>& ws = *ctx.workspace;
    const Saved saved = pop_saved(tape, ctx.n_seqs, L);
    const ConstView<T> O = tape.pop(N, C);
    const ConstView<T> QKY = tape.pop(N, qky_cols());
    const ConstView<T> P = tape.pop(N, proj.out());
    const ConstView<T> X = tape.pop(N, C);
    View<T> dP = ws.get(6, N, proj.out());

    // 6. Output path: Og = post_norm(O) o gelu(g) (or post_norm(O)), y = Og o_proj^T.
    View<T> PN = ws.get(3, N, C), dOg = ws.get(7, N, C);
    post_norm.forward(O, PN);
    if (config.use_gate) {
      View<T> act = ws.get(4, N, C), Og = ws.get(5, N, C);
      const ConstView<T> g = P.middle_cols(g_col(), C);
      copy<T>(g, act);
      gelu_tanh<T>(act);
      for (Index t = 0; t < N; ++t) simd::mul(PN.row(t), act.row(t), Og.row(t), C);
      o_proj.backward(Og, dy, dOg, ctx.grads, false, ctx.flops);
      // d gate = gelu'(g) o dOg o PN; d PN = dOg o gelu(g)
      for (Index t = 0; t < N; ++t) {
        simd::mul(dOg.row(t), PN.row(t), Og.row(t), C);
        simd::mul(dOg.row(t), act.row(t), dOg.row(t), C);
      }
      gelu_tanh_backward<T>(g, Og, dP.middle_cols(g_col(), C));
    } else {
      o_proj.backward(PN, dy, dOg, ctx.grads, false, ctx.flops);
    }
    View<T> dO = PN;  // PN is not needed any more
    post_norm.backward(O, dOg, dO, ctx.grads);

    // 5. The inner loop, sequence by sequence. dQ, dK: the rotated Q, K (P's columns, or a buffer
    // on the Mamba backbone, where they are conv outputs); dY lands in dV's columns (Y = V - K).
    View<T> dQK = config.share_qk ? ws.get(8, N, 2 * C) : View<T>();
    View<T> dQ = config.share_qk ? dQK.middle_cols(0, C) : dP.middle_cols(q_col(), C);
    View<T> dK = config.share_qk ? dQK.middle_cols(C, C) : dP.middle_cols(k_col(), C);
    View<T> dV = dP.middle_cols(v_col(), C), dlr = dP.middle_cols(lr_col(), H);
    const ConstView<T> Q = config.share_qk ? QKY.middle_cols(0, C) : P.middle_cols(q_col(), C);
    const ConstView<T> K = config.share_qk ? QKY.middle_cols(C, C) : P.middle_cols(k_col(), C);
    const ConstView<T> Y = QKY.middle_cols(QKY.cols() - C, C), lr = P.middle_cols(lr_col(), H);
    // Frozen inner LayerNorm or token scales: their adjoints still accumulate somewhere (scratch).
    Tensor<T>* g_gamma = ctx.grad(ttt_norm_weight);
    Tensor<T>* g_beta = ctx.grad(ttt_norm_bias);
    Tensor<T>* g_idx = ctx.grad(token_idx);
    Tensor<T> scratch_gamma, scratch_beta, scratch_idx;
    if (!g_gamma) scratch_gamma = Tensor<T>({H, d}), g_gamma = &scratch_gamma;
    if (!g_beta) scratch_beta = Tensor<T>({H, d}), g_beta = &scratch_beta;
    if (!g_idx) scratch_idx = Tensor<T>({b}), g_idx = &scratch_idx;
    View<T> dW1 = ws.get(9, H * d + H, F);
    View<T> dW2 = config.kind == Kind::mlp ? ws.get(10, H * F + H, d) : View<T>();
    InnerGrads<T> grads;
    grads.dgamma = g_gamma->view();
    grads.dbeta = g_beta->view();
    grads.dtoken_idx = g_idx->data();
    grads.dW0 = {dW1.middle_rows(0, H * d), dW1.middle_rows(H * d, H), {}, {}};
    if (config.kind == Kind::mlp) grads.dW0.W2 = dW2.middle_rows(0, H * F), grads.dW0.b2 = dW2.middle_rows(H * F, H);
    const InnerWeights<T> gW0{grad_view(ctx, W1), grad_view(ctx, b1), grad_view(ctx, W2), grad_view(ctx, b2)};
    for (Index s = 0; s < ctx.n_seqs; ++s) {
      grads.dQ = ctx.sequence(dQ, s), grads.dK = ctx.sequence(dK, s), grads.dY = ctx.sequence(dV, s);
      grads.dlr = ctx.sequence(dlr, s);
      run_inner_backward<T>(config, form, ctx.sequence(Q, s), ctx.sequence(K, s), ctx.sequence(Y, s), ctx.sequence(lr, s),
                            token_idx.data(), ttt_norm_weight, ttt_norm_bias, saved.of(s), ctx.sequence(ConstView<T>(dO), s),
                            grads, ctx.flops);
      for (auto [g, dg] : {std::pair{gW0.W1, grads.dW0.W1}, {gW0.b1, grads.dW0.b1}, {gW0.W2, grads.dW0.W2}, {gW0.b2, grads.dW0.b2}})
        if (!g.empty())
          for (Index r = 0; r < g.rows(); ++r) simd::add(g.row(r), dg.row(r), g.row(r), g.cols());
    }
    // 4. Y = V - K: dK -= dY.
    for (Index t = 0; t < N; ++t) simd::axpy(T(-1), dV.row(t), dK.row(t), C);
    // 3. eta = base_lr sigmoid(logit) / d: dlogit = dlr eta (1 - sigmoid) = dlr eta (1 - eta d / base_lr).
    Tensor<T>* g_lr_bias = ctx.grad(lr_bias);
    const T to_sigmoid = config.base_lr > 0 ? T(double(d) / config.base_lr) : T(0);
    for (Index t = 0; t < N; ++t)
      for (Index h = 0; h < H; ++h) {
        const T e = lr(t, h);
        dlr(t, h) = config.base_lr > 0 ? dlr(t, h) * e * (T(1) - e * to_sigmoid) : T(0);
        if (g_lr_bias) (*g_lr_bias)(h, 0) += dlr(t, h);
      }
    // 2. RoPE at t mod b, then (Mamba) the two convs back to xqk = q_proj(x).
    for (Index s = 0; s < ctx.n_seqs; ++s)
      for (Index t = 0; t < L;) {
        const Index m = std::min(b, L - t);
        apply_rope_backward<T>(ctx.sequence(dQ, s).middle_rows(t, m), H, d, rope_, RopePairing::interleaved, 0);
        apply_rope_backward<T>(ctx.sequence(dK, s).middle_rows(t, m), H, d, rope_, RopePairing::interleaved, 0);
        t += m;
      }
    if (config.share_qk) {
      View<T> dxqk = dP.middle_cols(q_col(), C);
      const ConstView<T> xqk = P.middle_cols(q_col(), C);
      for (Index s = 0; s < ctx.n_seqs; ++s) {
        conv_q.backward(ctx.sequence(xqk, s), ctx.sequence(ConstView<T>(dQ), s), ctx.sequence(dxqk, s), ctx.grads, false, ctx.flops);
        conv_k.backward(ctx.sequence(xqk, s), ctx.sequence(ConstView<T>(dK), s), ctx.sequence(dxqk, s), ctx.grads, true, ctx.flops);
      }
    }
    // 1. The fused projection.
    proj.backward(X, dP, dx, ctx.grads, false, ctx.flops);
  }

 private:
  RopeTable<T> rope_;  // cos/sin of positions 0 .. b-1

  // Views of one call's inputs to the inner loop (rows of P and QKY).
  struct Inputs {
    View<T> Q, K, V, Y, lr;  // [n, C] (lr [n, H])
  };
  // The start weights saved for every sequence of a training step.
  struct Saved {
    View<T> W1, b1, W2, b2;
    Index n_heads = 0, per_seq = 0;  // per_seq: segments per sequence
    SavedWeights<T> of(Index s) const {
      const Index rows = per_seq * n_heads, d = W1.rows() / b1.rows(), F = W1.cols();
      SavedWeights<T> w{W1.middle_rows(s * rows * d, rows * d), b1.middle_rows(s * rows, rows), {}, {}, n_heads};
      if (!W2.empty()) {
        w.W2 = W2.middle_rows(s * rows * F, rows * F);
        w.b2 = b2.middle_rows(s * rows, rows);
      }
      return w;
    }
  };

  Index qky_cols() const { return config.share_qk ? 3 * config.d_model : config.d_model; }

  // The state of a step (made by a layer of this shape) and its context's workspace, checked.
  State<T>* checked_state(LayerState<T>* state, const StepContext<T>& ctx, const char* where) const {
    auto* st = dynamic_cast<State<T>*>(state);
    check(st != nullptr, where, "needs its ttt::State (from make_state())");
    check(st->n_heads() == config.n_heads && st->W1.dim(2) == config.inner_dim(), where, "state was made by a layer of another shape");
    check(ctx.workspace != nullptr, where, "StepContext has no workspace");
    return st;
  }
  // A non-finite input would poison the inner weights for the rest of the sequence: refuse it
  // before the state changes.
  void check_input(ConstView<T> x, const State<T>& st, const char* where) const {
    for (Index t = 0; t < x.rows(); ++t)
      for (Index c = 0; c < x.cols(); ++c)
        check(std::isfinite(double(x(t, c))), where, "non-finite input at token ", st.position + t, ", channel ", c);
  }

  // Steps 2-4 of the forward for n rows starting at `position` (RoPE slot position mod b), given the
  // projections P [n, n_proj]: the Mamba backbone's convs from `history` [K, C] (the K rows before,
  // oldest first) into QKY's first 2C columns, RoPE on Q and K, eta in place in P's gate columns,
  // and the target Y = V - K in QKY's last C columns.
  Inputs prepare(View<T> P, View<T> QKY, ConstView<T> history, Index position, FlopCounter* flops) const {
    const Index n = P.rows(), C = config.d_model, H = config.n_heads, d = config.head_dim(), b = config.mini_batch;
    Inputs in;
    in.Y = QKY.middle_cols(QKY.cols() - C, C);
    if (config.share_qk) {
      // Mamba backbone: xqk = q_proj(x) feeds two separate causal convs with one shared history.
      in.Q = QKY.middle_cols(0, C);
      in.K = QKY.middle_cols(C, C);
      const ConstView<T> xqk = P.middle_cols(q_col(), C);
      conv_q.forward(xqk, history, in.Q, flops);
      conv_k.forward(xqk, history, in.K, flops);
    } else {
      in.Q = P.middle_cols(q_col(), C);
      in.K = P.middle_cols(k_col(), C);
    }
    in.V = P.middle_cols(v_col(), C);
    // RoPE on Q and K at position t mod b: one call per run of positions inside a mini-batch.
    for (Index t = 0; t < n;) {
      const Index p = (position + t) % b, m = std::min(b - p, n - t);
      apply_rope<T>(in.Q.middle_rows(t, m), H, d, rope_, RopePairing::interleaved, p);
      apply_rope<T>(in.K.middle_rows(t, m), H, d, rope_, RopePairing::interleaved, p);
      t += m;
    }
    // eta(x_t) = base_lr * sigmoid(x_t . w_h + c_h) / d, in place in P's gate columns: [n, H].
    in.lr = P.middle_cols(lr_col(), H);
    for (Index t = 0; t < n; ++t)
      for (Index h = 0; h < H; ++h) in.lr(t, h) += lr_bias(h, 0);
    sigmoid<T>(in.lr);
    for (Index t = 0; t < n; ++t) simd::scale(T(config.base_lr / double(d)), in.lr.row(t), H);
    // Reconstruction target Y = V - K (rotated K).
    for (Index t = 0; t < n; ++t) {
      std::copy_n(in.V.row(t), C, in.Y.row(t));
      simd::axpy(T(-1), in.K.row(t), in.Y.row(t), C);
    }
    return in;
  }

  // Step 6: y = o_proj(post_norm(O) o gelu_tanh(g)) (no gate factor without use_gate). g [n, C]: the
  // gate projection (P's gate columns, empty without use_gate); `normed` [n, C] receives post_norm(O)
  // and `act` gelu(g). Either may alias its input: inference works in place, training keeps O and g
  // for the backward.
  void output(ConstView<T> O, ConstView<T> g, View<T> normed, View<T> act, View<T> y, FlopCounter* flops) const {
    post_norm.forward(O, normed);
    if (config.use_gate) {
      if (act.data() != g.data()) copy<T>(g, act);
      gelu_tanh<T>(act);
      for (Index t = 0; t < O.rows(); ++t) simd::mul(normed.row(t), act.row(t), normed.row(t), config.d_model);
    }
    o_proj.forward(normed, y, flops);
  }
  // The gate columns of P (empty without use_gate).
  View<T> gate_of(View<T> P) const { return config.use_gate ? P.middle_cols(g_col(), config.d_model) : View<T>(); }

  // A zero conv history [K, C] in workspace slot `slot` (a training sequence starts fresh).
  View<T> zero_history(Workspace<T>& ws, int slot) const {
    View<T> h = ws.get(slot, std::max<Index>(config.conv_kernel, 1), config.d_model);
    detail::set_zero<T>(h);
    return h;
  }

  InnerWeights<T> initial_weights() const {
    auto v = [](const Tensor<T>& t) { return t.empty() ? View<T>() : View<T>(const_cast<T*>(t.data()), t.rows(), t.cols(), t.stride()); };
    return {v(W1), v(b1), v(W2), v(b2)};
  }
  static View<T> grad_view(TrainContext<T>& ctx, const Tensor<T>& param) {
    Tensor<T>* g = param.empty() ? nullptr : ctx.grad(param);
    return g ? g->view() : View<T>();
  }

  Saved push_saved(Tape<T>& tape, Index n_seqs, Index L) const { return saved_views(n_seqs, L, [&](Index r, Index c) { return tape.push(r, c); }); }
  Saved pop_saved(Tape<T>& tape, Index n_seqs, Index L) const {
    // Popped in reverse push order: b2, W2, b1, W1.
    const Index H = config.n_heads, d = config.head_dim(), F = config.inner_dim(), rows = n_seqs * n_segments(L, config.mini_batch) * H;
    Saved s;
    s.n_heads = H, s.per_seq = n_segments(L, config.mini_batch);
    if (config.kind == Kind::mlp) {
      s.b2 = tape.pop(rows, d);
      s.W2 = tape.pop(rows * F, d);
    }
    s.b1 = tape.pop(rows, F);
    s.W1 = tape.pop(rows * d, F);
    return s;
  }
  template <class Push>
  Saved saved_views(Index n_seqs, Index L, Push&& push) const {
    const Index H = config.n_heads, d = config.head_dim(), F = config.inner_dim(), rows = n_seqs * n_segments(L, config.mini_batch) * H;
    Saved s;
    s.n_heads = H, s.per_seq = n_segments(L, config.mini_batch);
    s.W1 = push(rows * d, F);
    s.b1 = push(rows, F);
    if (config.kind == Kind::mlp) {
      s.W2 = push(rows * F, d);
      s.b2 = push(rows, d);
    }
    return s;
  }
};

}  // namespace ttt
ENGRAM_NAMESPACE_END
