// Backward of the primal form (primal.hpp) for one mini-batch segment of one head: token by token
// in reverse, rebuilding the gradient sums S_i of each token from the segment's total by removing
// one rank-1 term per step (inner_backward.hpp has the derivation). It serves the partial last
// mini-batch of a sequence, and the primal form everywhere as the witness of the dual backward.
#pragma once

#include "engram/ttt/dual_backward.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

namespace detail {
// One layer's sums at the end of a segment, S = X^T (lr o G) [n_in, n_out] and sb = sum_j lr_j G_j,
// and the initial adjoints from the end weights W' = W - s_last S (with `commit`):
// dS = -s_last dW', dsb = -s_last db', ds_last -= <S, dW'> + <sb, db'>; zero otherwise.
template <class T>
void primal_sums(ConstView<T> X, ConstView<T> lrG, bool commit, T s_last, ConstView<T> dWp, ConstView<T> dbp, View<T> S,
                 View<T> sb, View<T> dS, View<T> dsb, T& ds_last) {
  gemm<T>(X, Trans::yes, lrG, Trans::no, S);
  set_zero<T>(sb);
  add_column_sums<T>(lrG, T(1), sb);
  if (!commit) {
    set_zero<T>(dS);
    set_zero<T>(dsb);
    return;
  }
  for (Index r = 0; r < S.rows(); ++r) {
    ds_last -= simd::dot(S.row(r), dWp.row(r), S.cols());
    for (Index c = 0; c < S.cols(); ++c) dS(r, c) = -s_last * dWp(r, c);
  }
  ds_last -= simd::dot(sb.row(0), dbp.row(0), sb.cols());
  for (Index c = 0; c < sb.cols(); ++c) dsb(0, c) = -s_last * dbp(0, c);
}

// acc [n_out] = x S + sb: the test input's correction before the token scale (zbar = x W + b - s acc).
template <class T>
void apply_sums(const T* x, ConstView<T> S, ConstView<T> sb, T* acc) {
  std::copy_n(sb.row(0), S.cols(), acc);
  for (Index r = 0; r < S.rows(); ++r) simd::axpy(x[r], S.row(r), acc, S.cols());
}

// The adjoint of one token i through one layer's sums, given dzbar = dL/dzbar_i (zbar_i = x W + b
// - s_i (x S_i + sb_i)), walking back from S_i to S_{i-1} = S_i - lr_i a_i^T g_i in the same sweep:
//   dx -= s_i S_i dzbar^T,  dS -= s_i x^T dzbar,  dsb -= s_i dzbar;
//   then through the rank-1 term (adjoint dS of S_i): w = a_i dS + dsb, dg_i += lr_i w,
//   dlr_i += <g_i, w>, da_i += lr_i dS g_i^T.
// x: the test input [n_in]; a, g: the training input [n_in] and gradient [n_out] of token i.
template <class T>
void token_sums_backward(const T* x, const T* dzbar, T s, T lr, const T* a, const T* g, View<T> S, View<T> sb, View<T> dS,
                         View<T> dsb, T* dx, T* da, T* dg, T& dlr, T* w) {
  const Index n_out = S.cols();
  simd::axpy(-s, dzbar, dsb.row(0), n_out);
  std::copy_n(dsb.row(0), n_out, w);
  for (Index r = 0; r < S.rows(); ++r) {
    T* Sr = S.row(r);
    T* dSr = dS.row(r);
    dx[r] -= s * simd::dot(Sr, dzbar, n_out);
    simd::axpy(-lr * a[r], g, Sr, n_out);  // S_i -> S_{i-1}
    simd::axpy(-s * x[r], dzbar, dSr, n_out);
    simd::axpy(a[r], dSr, w, n_out);
    da[r] += lr * simd::dot(dSr, g, n_out);
  }
  simd::axpy(-lr, g, sb.row(0), n_out);
  simd::axpy(lr, w, dg, n_out);
  dlr += simd::dot(g, w, n_out);
}
}  // namespace detail

/// TTT-Linear, primal form; arguments as dual_linear_backward. The segment starts at in-mini-batch
/// position 0 with no pending sums (a training sequence starts from a fresh state).
template <class T>
void primal_linear_backward(HeadParams<T> W, const Segment<T>& in, ConstView<T> dout, bool commit, HeadParams<T> dW,
                            const SegmentGrads<T>& g, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols();
  detail::begin_segment_grads(g, m);
  // Recompute: Z [2m, d] = [K; Q] W + b, G at the start weights, the segment's sums S, sb.
  View<T> KQ = detail::stack_rows<T>(in.K, in.Q, arena);
  View<T> Z = arena.take(2 * m, d);
  matmul<T>(KQ, W.W1, Z);
  detail::add_row<T>(Z, W.b1);
  View<T> Zk = Z.middle_rows(0, m), Zq = Z.middle_rows(m, m);
  View<T> G = arena.take(m, d), lrG = arena.take(m, d);
  ln_l2_grad<T>(Zk, in.Y, in.gamma, in.beta, in.eps, G);
  copy<T>(G, lrG);
  detail::scale_rows<T>(lrG, in.lr);
  View<T> S = arena.take(d, d), sb = arena.take(1, d), dS = arena.take(d, d), dsb = arena.take(1, d);
  detail::primal_sums<T>(in.K, lrG, commit, in.s[m - 1], dW.W1, dW.b1, S, sb, dS, dsb, g.ds[m - 1]);
  if (!commit) detail::zero_params(dW);

  View<T> dKQ = arena.take(2 * m, d);
  View<T> dK = dKQ.middle_rows(0, m), dQ = dKQ.middle_rows(m, m);
  View<T> dG = arena.take(m, d);
  View<T> DZ = arena.take(2 * m, d);  // [dZ; dL/d(Q W + b)]
  detail::set_zero<T>(dK);
  detail::set_zero<T>(dG);
  copy<T>(dout, dQ);
  View<T> acc = arena.take(1, d), zbar = arena.take(1, d);
  T* w = arena.take(1, d).row(0);
  for (Index i = m - 1; i >= 0; --i) {
    // zbar_i = q_i W + b - s_i (q_i S_i + sb_i), out_i = q_i + LN(zbar_i)
    detail::apply_sums<T>(in.Q.row(i), S, sb, acc.row(0));
    std::copy_n(Zq.row(i), d, zbar.row(0));
    simd::axpy(-in.s[i], acc.row(0), zbar.row(0), d);
    T* dzbar = DZ.row(m + i);
    layer_norm_backward<T>(zbar, in.gamma, in.eps, dout.middle_rows(i, 1), DZ.middle_rows(m + i, 1), g.dgamma, g.dbeta);
    g.ds[i] -= simd::dot(dzbar, acc.row(0), d);
    detail::token_sums_backward<T>(in.Q.row(i), dzbar, in.s[i], in.lr[i], in.K.row(i), G.row(i), S, sb, dS, dsb, dQ.row(i),
                                   dK.row(i), dG.row(i), g.dlr[i], w);
  }
  ln_l2_grad_backward<T>(Zk, in.Y, in.gamma, in.beta, in.eps, dG, DZ.middle_rows(0, m), g.dY, g.dgamma, g.dbeta);
  detail::stacked_product_backward<T>(KQ, DZ, W.W1, dW.W1, dW.b1, dKQ);
  detail::unstack_rows<T>(dKQ, g);
}

/// TTT-MLP, primal form; arguments as dual_linear_backward.
template <class T>
void primal_mlp_backward(HeadParams<T> W, const Segment<T>& in, ConstView<T> dout, bool commit, HeadParams<T> dW,
                         const SegmentGrads<T>& g, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols(), F = W.W1.cols();
  detail::begin_segment_grads(g, m);
  const detail::MlpTrainView<T> v = detail::mlp_train_view<T>(W, in, arena);
  View<T> Zq = v.Z.middle_rows(m, m);  // Q W1 + b1
  View<T> lrG1 = arena.take(m, F), lrG2 = arena.take(m, d);
  copy<T>(v.G1, lrG1);
  copy<T>(v.G2, lrG2);
  detail::scale_rows<T>(lrG1, in.lr);
  detail::scale_rows<T>(lrG2, in.lr);
  const T c = in.s[m - 1];
  View<T> S1 = arena.take(d, F), sb1 = arena.take(1, F), dS1 = arena.take(d, F), dsb1 = arena.take(1, F);
  View<T> S2 = arena.take(F, d), sb2 = arena.take(1, d), dS2 = arena.take(F, d), dsb2 = arena.take(1, d);
  detail::primal_sums<T>(in.K, lrG1, commit, c, dW.W1, dW.b1, S1, sb1, dS1, dsb1, g.ds[m - 1]);
  detail::primal_sums<T>(v.X2, lrG2, commit, c, dW.W2, dW.b2, S2, sb2, dS2, dsb2, g.ds[m - 1]);
  if (!commit) detail::zero_params(dW);

  View<T> dKQ = arena.take(2 * m, d);
  View<T> dK = dKQ.middle_rows(0, m), dQ = dKQ.middle_rows(m, m);
  View<T> dG1 = arena.take(m, F), dG2 = arena.take(m, d), dX2 = arena.take(m, F);
  View<T> DZ = arena.take(2 * m, F);  // [dZ1; dL/d(Q W1 + b1)]
  for (View<T> t : {dK, dG1, dG2, dX2}) detail::set_zero<T>(t);
  copy<T>(dout, dQ);
  View<T> acc1 = arena.take(1, F), zbar1 = arena.take(1, F), xbar2 = arena.take(1, F), dxbar2 = arena.take(1, F);
  View<T> acc2 = arena.take(1, d), zbar2 = arena.take(1, d), dzbar2 = arena.take(1, d);
  T* w = arena.take(1, F).row(0);
  for (Index i = m - 1; i >= 0; --i) {
    const T s = in.s[i], lr = in.lr[i];
    // Layer 1: zbar1 = q W1 + b1 - s (q S1_i + sb1_i), xbar2 = gelu(zbar1)
    detail::apply_sums<T>(in.Q.row(i), S1, sb1, acc1.row(0));
    std::copy_n(Zq.row(i), F, zbar1.row(0));
    simd::axpy(-s, acc1.row(0), zbar1.row(0), F);
    copy<T>(zbar1, xbar2);
    gelu_tanh<T>(xbar2);
    // Layer 2: zbar2 = xbar2 W2 + b2 - s (xbar2 S2_i + sb2_i), out = q + LN(zbar2)
    detail::apply_sums<T>(xbar2.row(0), S2, sb2, acc2.row(0));
    matmul<T>(xbar2, W.W2, zbar2);
    detail::add_row<T>(zbar2, W.b2);
    simd::axpy(-s, acc2.row(0), zbar2.row(0), d);
    layer_norm_backward<T>(zbar2, in.gamma, in.eps, dout.middle_rows(i, 1), dzbar2, g.dgamma, g.dbeta);
    g.ds[i] -= simd::dot(dzbar2.row(0), acc2.row(0), d);
    // dxbar2 = dzbar2 W2^T (then -s S2 dzbar2^T in the sweep); dW2 += xbar2^T dzbar2, db2 += dzbar2
    matmul_nt<T>(dzbar2, W.W2, dxbar2);
    gemm<T>(xbar2, Trans::yes, dzbar2, Trans::no, dW.W2, T(1), T(1));
    simd::add(dW.b2.row(0), dzbar2.row(0), dW.b2.row(0), d);
    detail::token_sums_backward<T>(xbar2.row(0), dzbar2.row(0), s, lr, v.X2.row(i), v.G2.row(i), S2, sb2, dS2, dsb2,
                                   dxbar2.row(0), dX2.row(i), dG2.row(i), g.dlr[i], w);
    // dzbar1 = dxbar2 o gelu'(zbar1), the layer-1 sums
    T* dzbar1 = DZ.row(m + i);
    gelu_tanh_backward<T>(zbar1, dxbar2, DZ.middle_rows(m + i, 1));
    g.ds[i] -= simd::dot(dzbar1, acc1.row(0), F);
    detail::token_sums_backward<T>(in.Q.row(i), dzbar1, s, lr, in.K.row(i), v.G1.row(i), S1, sb1, dS1, dsb1, dQ.row(i),
                                   dK.row(i), dG1.row(i), g.dlr[i], w);
  }
  detail::mlp_train_view_backward<T>(W, in, v, dG1, dG2, dX2, DZ, dW, g, dKQ, arena);
  detail::unstack_rows<T>(dKQ, g);
}

/// Dispatches on the inner model.
template <class T>
void primal_segment_backward(Kind kind, HeadParams<T> W, const Segment<T>& in, ConstView<T> dout, bool commit,
                             HeadParams<T> dW, const SegmentGrads<T>& g, Arena<T>& arena) {
  if (kind == Kind::linear) primal_linear_backward<T>(W, in, dout, commit, dW, g, arena);
  else primal_mlp_backward<T>(W, in, dout, commit, dW, g, arena);
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
