// The dual form of mini-batch TTT (ttt.md 3.2-3.3): a whole mini-batch of one head as matrix products,
// every gradient taken at the weights of the mini-batch start, the LN+L2 backward in closed form.
#pragma once

#include "engram/ttt/inner.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

namespace detail {
// A [m, m] = E o (A + 1) with E_ij = s_i lr_j for j <= i and 0 above the diagonal (token i sees the
// gradients of tokens 0..i, its own included).
template <class T>
void causal_eta_mask(View<T> a, const T* s, const T* lr) {
  for (Index i = 0; i < a.rows(); ++i) {
    T* row = a.row(i);
    for (Index j = 0; j <= i; ++j) row[j] = s[i] * lr[j] * (row[j] + T(1));
    std::fill(row + i + 1, row + a.cols(), T(0));
  }
}
}  // namespace detail

/// One aligned mini-batch segment (in-mini-batch positions 0 .. m-1) of one head, TTT-Linear:
///   Z = K W0 + b0, G = dl/dZ (closed form), Zbar = Q W0 + b0 - (E o (Q K^T + 1)) G,
///   out = Q + LN(Zbar), and the lr-weighted sums K^T (lr o G), sum_j lr_j g_j.
/// With `commit` (a whole mini-batch) W0 <- W0 - s_{m-1} * sums; otherwise the sums become the
/// pending sums of the state. The pending sums must be zero on entry.
template <class T>
void dual_linear(HeadParams<T> W, HeadParams<T> sums, const Segment<T>& in, bool commit, Arena<T>& arena) {
  const Index m = in.Q.rows();
  // [K; Q] W0 + b0: G [m, d] = dl/dZ at the start weights (Z = K W0 + b0 in place), Zbar [m, d] = Q W0 + b0.
  View<T> Z = detail::stacked_product<T>(in.K, in.Q, W.W1, W.b1, arena);
  View<T> G = Z.middle_rows(0, m), Zbar = Z.middle_rows(m, m);
  ln_l2_grad<T>(G, in.Y, in.gamma, in.beta, in.eps, G);
  // M: [m, m] = E o (Q K^T + 1)
  View<T> M = arena.take(m, m);
  matmul_nt<T>(in.Q, in.K, M);
  detail::causal_eta_mask<T>(M, in.s, in.lr);
  // Zbar -= M G (the two masked products of the reference fused into one)
  gemm<T>(M, Trans::no, G, Trans::no, Zbar, T(-1), T(1));
  detail::residual_layer_norm<T>(in.Q, Zbar, in.gamma, in.beta, in.eps, in.out);
  // lr o G, then the sums (straight into W0 when committing)
  detail::scale_rows<T>(G, in.lr);
  if (commit) {
    const T s_last = in.s[m - 1];
    gemm<T>(in.K, Trans::yes, G, Trans::no, W.W1, -s_last, T(1));
    detail::add_column_sums<T>(G, -s_last, W.b1);
  } else {
    gemm<T>(in.K, Trans::yes, G, Trans::no, sums.W1);
    detail::set_zero<T>(sums.b1);
    detail::add_column_sums<T>(G, T(1), sums.b1);
  }
}

/// TTT-MLP (ttt.md 3.3): Z1 = K W1 + b1, X2 = gelu(Z1), Z2 = X2 W2 + b2, G2 = dl/dZ2,
/// G1 = (G2 W2^T) o gelu'(Z1); Zbar1 = Q W1 + b1 - (E o (Q K^T + 1)) G1, Xbar2 = gelu(Zbar1),
/// Zbar2 = Xbar2 W2 + b2 - (E o (Xbar2 X2^T + 1)) G2, out = Q + LN(Zbar2). Commit/sums as dual_linear.
template <class T>
void dual_mlp(HeadParams<T> W, HeadParams<T> sums, const Segment<T>& in, bool commit, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols(), F = W.W1.cols();
  // Forward of the training view at the start weights; the test view's Q W1 + b1 in the same product.
  View<T> Z = detail::stacked_product<T>(in.K, in.Q, W.W1, W.b1, arena);
  View<T> Z1 = Z.middle_rows(0, m), Xbar2 = Z.middle_rows(m, m);  // [m, F] each
  View<T> X2 = arena.take(m, F);  // [m, F]
  copy<T>(Z1, X2);
  gelu_tanh<T>(X2);
  View<T> G2 = arena.take(m, d);  // [m, d]: Z2, then dl/dZ2 in place
  matmul<T>(X2, W.W2, G2);
  detail::add_row<T>(G2, W.b2);
  ln_l2_grad<T>(G2, in.Y, in.gamma, in.beta, in.eps, G2);
  // Backward to layer 1: G1 [m, F] = (G2 W2^T) o gelu'(Z1)
  View<T> G1 = arena.take(m, F);
  matmul_nt<T>(G2, W.W2, G1);
  gelu_tanh_derivative<T>(Z1);
  for (Index r = 0; r < m; ++r) simd::mul(G1.row(r), Z1.row(r), G1.row(r), F);
  // Test view, layer 1: Zbar1 [m, F] = Q W1 + b1 - (E o (Q K^T + 1)) G1, then Xbar2 = gelu(Zbar1) in place
  View<T> M = arena.take(m, m);
  matmul_nt<T>(in.Q, in.K, M);
  detail::causal_eta_mask<T>(M, in.s, in.lr);
  gemm<T>(M, Trans::no, G1, Trans::no, Xbar2, T(-1), T(1));
  gelu_tanh<T>(Xbar2);
  // Layer 2 pairs the test-view activations Xbar2 with the training-view X2 of the start weights.
  matmul_nt<T>(Xbar2, X2, M);
  detail::causal_eta_mask<T>(M, in.s, in.lr);
  View<T> Zbar2 = arena.take(m, d);  // [m, d]
  matmul<T>(Xbar2, W.W2, Zbar2);
  detail::add_row<T>(Zbar2, W.b2);
  gemm<T>(M, Trans::no, G2, Trans::no, Zbar2, T(-1), T(1));
  detail::residual_layer_norm<T>(in.Q, Zbar2, in.gamma, in.beta, in.eps, in.out);
  // Sums: K^T (lr o G1), X2^T (lr o G2) and the bias sums (W2 is updated only after its last use).
  detail::scale_rows<T>(G1, in.lr);
  detail::scale_rows<T>(G2, in.lr);
  const T alpha = commit ? -in.s[m - 1] : T(1);
  const HeadParams<T>& dst = commit ? W : sums;
  const T beta = commit ? T(1) : T(0);
  gemm<T>(in.K, Trans::yes, G1, Trans::no, dst.W1, alpha, beta);
  gemm<T>(X2, Trans::yes, G2, Trans::no, dst.W2, alpha, beta);
  if (!commit) {
    detail::set_zero<T>(sums.b1);
    detail::set_zero<T>(sums.b2);
  }
  detail::add_column_sums<T>(G1, alpha, dst.b1);
  detail::add_column_sums<T>(G2, alpha, dst.b2);
}

/// Dispatches on the inner model.
template <class T>
void dual_segment(Kind kind, HeadParams<T> W, HeadParams<T> sums, const Segment<T>& in, bool commit, Arena<T>& arena) {
  if (kind == Kind::linear) dual_linear<T>(W, sums, in, commit, arena);
  else dual_mlp<T>(W, sums, in, commit, arena);
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
