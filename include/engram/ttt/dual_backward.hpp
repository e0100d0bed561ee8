// Backward of the dual form (dual.hpp) for one mini-batch segment of one head: recomputes the
// segment from its saved start weights, then propagates dL/dout and the adjoint of the end
// weights to Q, K, Y, eta, the token scales, gamma/beta and the start weights (inner_backward.hpp
// has the derivation).
#pragma once

#include "engram/ttt/inner_grad.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

namespace detail {
// Zeroes the token-level adjoints of a segment before the pieces accumulate into them.
template <class T>
void begin_segment_grads(const SegmentGrads<T>& g, Index m) {
  std::fill_n(g.dlr, m, T(0));
  std::fill_n(g.ds, m, T(0));
}
// Without a commit the end weights do not exist: their adjoint is zero.
template <class T>
void zero_params(HeadParams<T> p) {
  set_zero<T>(p.W1);
  set_zero<T>(p.b1);
  if (!p.W2.empty()) {
    set_zero<T>(p.W2);
    set_zero<T>(p.b2);
  }
}
}  // namespace detail

/// TTT-Linear, dual form. W: the segment's start weights (read only). dout [m, d] = dL/dout.
/// dW: on entry the adjoint of the end weights W' (ignored without `commit`), on return the adjoint
/// of the start weights. g receives the token adjoints (see SegmentGrads).
template <class T>
void dual_linear_backward(HeadParams<T> W, const Segment<T>& in, ConstView<T> dout, bool commit, HeadParams<T> dW,
                          const SegmentGrads<T>& g, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols();
  detail::begin_segment_grads(g, m);
  if (!commit) detail::zero_params(dW);
  // Recompute: Z [2m, d] = [K; Q] W + b, G = dl/dZ at the start weights, A = Q K^T, M = E o (A + 1),
  // Zbar = Q W + b - M G (in place in Z's lower rows).
  View<T> KQ = detail::stack_rows<T>(in.K, in.Q, arena);
  View<T> Z = arena.take(2 * m, d);
  matmul<T>(KQ, W.W1, Z);
  detail::add_row<T>(Z, W.b1);
  View<T> Zk = Z.middle_rows(0, m), Zbar = Z.middle_rows(m, m);
  View<T> G = arena.take(m, d);
  ln_l2_grad<T>(Zk, in.Y, in.gamma, in.beta, in.eps, G);
  View<T> A = arena.take(m, m), M = arena.take(m, m);
  matmul_nt<T>(in.Q, in.K, A);
  copy<T>(A, M);
  detail::causal_eta_mask<T>(M, in.s, in.lr);
  gemm<T>(M, Trans::no, G, Trans::no, Zbar, T(-1), T(1));

  View<T> dKQ = arena.take(2 * m, d);  // [dK; dQ]
  View<T> dK = dKQ.middle_rows(0, m), dQ = dKQ.middle_rows(m, m);
  View<T> dG = arena.take(m, d);
  View<T> DZ = arena.take(2 * m, d);  // [dZ; dZbar]
  View<T> dZbar = DZ.middle_rows(m, m);
  // End weights W' = W - s_last K^T (lr o G), b' = b - s_last sum lr_j g_j (before dW accumulates).
  if (commit) {
    View<T> lrG = arena.take(m, d);
    copy<T>(G, lrG);
    detail::scale_rows<T>(lrG, in.lr);
    detail::set_zero<T>(dK);
    detail::update_backward<T>(in.K, G, lrG, in.lr, in.s[m - 1], dW.W1, dW.b1, dG, dK, g.dlr, g.ds[m - 1], arena);
  } else {
    detail::set_zero<T>(dK);
    detail::set_zero<T>(dG);
  }
  // out = Q + LN(Zbar)
  copy<T>(dout, dQ);
  layer_norm_backward<T>(Zbar, in.gamma, in.eps, dout, dZbar, g.dgamma, g.dbeta);
  // Zbar = Q W + b - M G: dG -= M^T dZbar, dM = -dZbar G^T; then M = E o (Q K^T + 1)
  gemm<T>(M, Trans::yes, dZbar, Trans::no, dG, T(-1), T(1));
  View<T> dM = M;  // M is not needed any more
  gemm<T>(dZbar, Trans::no, G, Trans::yes, dM, T(-1), T(0));
  detail::causal_eta_mask_backward<T>(dM, A, in.s, in.lr, g.ds, g.dlr);
  gemm<T>(dM, Trans::no, in.K, Trans::no, dQ, T(1), T(1));
  gemm<T>(dM, Trans::yes, in.Q, Trans::no, dK, T(1), T(1));
  // G = ln_l2_grad(Z, Y), then Z = [K; Q] W + b
  ln_l2_grad_backward<T>(Zk, in.Y, in.gamma, in.beta, in.eps, dG, DZ.middle_rows(0, m), g.dY, g.dgamma, g.dbeta);
  detail::stacked_product_backward<T>(KQ, DZ, W.W1, dW.W1, dW.b1, dKQ);
  detail::unstack_rows<T>(dKQ, g);
}

/// TTT-MLP, dual form (ttt.md 3.3); arguments as dual_linear_backward.
template <class T>
void dual_mlp_backward(HeadParams<T> W, const Segment<T>& in, ConstView<T> dout, bool commit, HeadParams<T> dW,
                       const SegmentGrads<T>& g, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols(), F = W.W1.cols();
  detail::begin_segment_grads(g, m);
  if (!commit) detail::zero_params(dW);
  // Recompute the training view, then the test view: Zbar1 = Q W1 + b1 - M1 G1 (in place in Z's
  // lower rows), Xbar2 = gelu(Zbar1), Zbar2 = Xbar2 W2 + b2 - M2 G2.
  const detail::MlpTrainView<T> v = detail::mlp_train_view<T>(W, in, arena);
  View<T> Zbar1 = v.Z.middle_rows(m, m);
  View<T> A1 = arena.take(m, m), M1 = arena.take(m, m), A2 = arena.take(m, m), M2 = arena.take(m, m);
  matmul_nt<T>(in.Q, in.K, A1);
  copy<T>(A1, M1);
  detail::causal_eta_mask<T>(M1, in.s, in.lr);
  gemm<T>(M1, Trans::no, v.G1, Trans::no, Zbar1, T(-1), T(1));
  View<T> Xbar2 = arena.take(m, F);
  copy<T>(Zbar1, Xbar2);
  gelu_tanh<T>(Xbar2);
  matmul_nt<T>(Xbar2, v.X2, A2);
  copy<T>(A2, M2);
  detail::causal_eta_mask<T>(M2, in.s, in.lr);
  View<T> Zbar2 = arena.take(m, d);
  matmul<T>(Xbar2, W.W2, Zbar2);
  detail::add_row<T>(Zbar2, W.b2);
  gemm<T>(M2, Trans::no, v.G2, Trans::no, Zbar2, T(-1), T(1));

  View<T> dKQ = arena.take(2 * m, d);
  View<T> dK = dKQ.middle_rows(0, m), dQ = dKQ.middle_rows(m, m);
  View<T> dG1 = arena.take(m, F), dG2 = arena.take(m, d), dX2 = arena.take(m, F);
  View<T> DZ = arena.take(2 * m, F);  // [dZ1; dZbar1]
  View<T> dZbar1 = DZ.middle_rows(m, m);
  detail::set_zero<T>(dK);
  detail::set_zero<T>(dX2);
  // End weights of both layers (before dW accumulates).
  if (commit) {
    const T c = in.s[m - 1];
    View<T> lrG1 = arena.take(m, F), lrG2 = arena.take(m, d);
    copy<T>(v.G1, lrG1);
    copy<T>(v.G2, lrG2);
    detail::scale_rows<T>(lrG1, in.lr);
    detail::scale_rows<T>(lrG2, in.lr);
    detail::update_backward<T>(in.K, v.G1, lrG1, in.lr, c, dW.W1, dW.b1, dG1, dK, g.dlr, g.ds[m - 1], arena);
    detail::update_backward<T>(v.X2, v.G2, lrG2, in.lr, c, dW.W2, dW.b2, dG2, dX2, g.dlr, g.ds[m - 1], arena);
  } else {
    detail::set_zero<T>(dG1);
    detail::set_zero<T>(dG2);
  }
  // out = Q + LN(Zbar2)
  copy<T>(dout, dQ);
  View<T> dZbar2 = arena.take(m, d);
  layer_norm_backward<T>(Zbar2, in.gamma, in.eps, dout, dZbar2, g.dgamma, g.dbeta);
  // Zbar2 = Xbar2 W2 + b2 - M2 G2
  View<T> dXbar2 = arena.take(m, F);
  matmul_nt<T>(dZbar2, W.W2, dXbar2);
  gemm<T>(Xbar2, Trans::yes, dZbar2, Trans::no, dW.W2, T(1), T(1));
  detail::add_column_sums<T>(dZbar2, T(1), dW.b2);
  gemm<T>(M2, Trans::yes, dZbar2, Trans::no, dG2, T(-1), T(1));
  gemm<T>(dZbar2, Trans::no, v.G2, Trans::yes, M2, T(-1), T(0));  // M2 <- dM2
  detail::causal_eta_mask_backward<T>(M2, A2, in.s, in.lr, g.ds, g.dlr);
  // A2 = Xbar2 X2^T
  gemm<T>(M2, Trans::no, v.X2, Trans::no, dXbar2, T(1), T(1));
  gemm<T>(M2, Trans::yes, Xbar2, Trans::no, dX2, T(1), T(1));
  // Xbar2 = gelu(Zbar1): dZbar1 = dXbar2 o gelu'(Zbar1)
  gelu_tanh_backward<T>(Zbar1, dXbar2, dZbar1);
  // Zbar1 = Q W1 + b1 - M1 G1 (the Q W1 + b1 part is in DZ's lower rows), M1 = E o (Q K^T + 1)
  gemm<T>(M1, Trans::yes, dZbar1, Trans::no, dG1, T(-1), T(1));
  gemm<T>(dZbar1, Trans::no, v.G1, Trans::yes, M1, T(-1), T(0));  // M1 <- dM1
  detail::causal_eta_mask_backward<T>(M1, A1, in.s, in.lr, g.ds, g.dlr);
  gemm<T>(M1, Trans::no, in.K, Trans::no, dQ, T(1), T(1));
  gemm<T>(M1, Trans::yes, in.Q, Trans::no, dK, T(1), T(1));
  detail::mlp_train_view_backward<T>(W, in, v, dG1, dG2, dX2, DZ, dW, g, dKQ, arena);
  detail::unstack_rows<T>(dKQ, g);
}

/// Dispatches on the inner model.
template <class T>
void dual_segment_backward(Kind kind, HeadParams<T> W, const Segment<T>& in, ConstView<T> dout, bool commit, HeadParams<T> dW,
                           const SegmentGrads<T>& g, Arena<T>& arena) {
  if (kind == Kind::linear) dual_linear_backward<T>(W, in, dout, commit, dW, g, arena);
  else dual_mlp_backward<T>(W, in, dout, commit, dW, g, arena);
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
