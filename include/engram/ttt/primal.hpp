// The primal form of mini-batch TTT (ttt.md 3.4): token by token inside a mini-batch, keeping the
// lr-weighted gradient sums; serves decode and partial mini-batches that start anywhere.
#pragma once

#include "engram/ttt/inner.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

namespace detail {
// One token's pass over a sum matrix S [n_in, n_out]: S += a (x) g (rank 1, a = lr * x_train),
// then acc += x_test . S with the updated S (the test input sees its own gradient). One sweep of S:
// this d^2 traffic per token is what the dual form turns into matrix products.
template <class T>
void rank1_update_and_apply(View<T> S, T lr, const T* x_train, const T* g, const T* x_test, T* acc) {
  const Index n_out = S.cols();
  std::fill_n(acc, n_out, T(0));
  for (Index r = 0; r < S.rows(); ++r) {
    simd::axpy(lr * x_train[r], g, S.row(r), n_out);
    simd::axpy(x_test[r], S.row(r), acc, n_out);
  }
}
// z -= s * (acc + bias_sum): the test view's correction W_i = W0 - s_i * sum_{j<=i} lr_j grad_j.
template <class T>
void subtract_scaled(T* z, T s, const T* acc, const T* bias_sum, Index n) {
  simd::axpy(-s, acc, z, n);
  simd::axpy(-s, bias_sum, z, n);
}
// W0 <- W0 - s * sums, sums <- 0 (end of a mini-batch).
template <class T>
void commit_sums(View<T> w, View<T> sums, T s) {
  for (Index r = 0; r < w.rows(); ++r) {
    simd::axpy(-s, sums.row(r), w.row(r), w.cols());
    std::fill_n(sums.row(r), sums.cols(), T(0));
  }
}
}  // namespace detail

/// m tokens of one head inside one mini-batch, TTT-Linear. The gradients (all at the start weights
/// W0) and Q W0 are batched; then per token i: sums += lr_i k_i^T g_i, zbar_i = q_i W0 + b0 -
/// s_i (q_i sum_W + sum_b), out_i = q_i + LN(zbar_i). With `commit` (the segment ends the mini-batch)
/// W0 <- W0 - s_last * sums and the sums reset.
// Deviation from ttt.md 3.4 (same math, different rounding): W_i = W0 - s_i sum_W is never formed;
// q_i W_i is computed as q_i W0 - s_i (q_i sum_W), which saves writing a d x F matrix per token.
template <class T>
void primal_linear(HeadParams<T> W, HeadParams<T> sums, const Segment<T>& in, bool commit, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols();
  // G [m, d]: Z = K W0 + b0, then dl/dZ in place; Zbar [m, d]: Q W0 + b0, corrected token by token.
  View<T> Z = detail::stacked_product<T>(in.K, in.Q, W.W1, W.b1, arena);
  View<T> G = Z.middle_rows(0, m), Zbar = Z.middle_rows(m, m);
  ln_l2_grad<T>(G, in.Y, in.gamma, in.beta, in.eps, G);
  T* acc = arena.take(1, d).row(0);
  for (Index i = 0; i < m; ++i) {
    detail::rank1_update_and_apply<T>(sums.W1, in.lr[i], in.K.row(i), G.row(i), in.Q.row(i), acc);
    simd::axpy(in.lr[i], G.row(i), sums.b1.row(0), d);
    detail::subtract_scaled<T>(Zbar.row(i), in.s[i], acc, sums.b1.row(0), d);
  }
  detail::residual_layer_norm<T>(in.Q, Zbar, in.gamma, in.beta, in.eps, in.out);
  if (commit) {
    detail::commit_sums<T>(W.W1, sums.W1, in.s[m - 1]);
    detail::commit_sums<T>(W.b1, sums.b1, in.s[m - 1]);
  }
}

/// TTT-MLP: the training view (Z1, X2, G2, G1 at W0) and Q W1 + b1 are batched; per token the first
/// layer's sums and test activation xbar2 = gelu(zbar1), then the second layer's sums and
/// zbar2 = xbar2 W2 + b2 - s_i (xbar2 sum_W2 + sum_b2).
template <class T>
void primal_mlp(HeadParams<T> W, HeadParams<T> sums, const Segment<T>& in, bool commit, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols(), F = W.W1.cols();
  View<T> Z = detail::stacked_product<T>(in.K, in.Q, W.W1, W.b1, arena);
  View<T> Z1 = Z.middle_rows(0, m), Xbar2 = Z.middle_rows(m, m);  // [m, F]: K W1 + b1, Q W1 + b1
  View<T> X2 = arena.take(m, F);  // [m, F]
  copy<T>(Z1, X2);
  gelu_tanh<T>(X2);
  View<T> G2 = arena.take(m, d);  // [m, d]
  matmul<T>(X2, W.W2, G2);
  detail::add_row<T>(G2, W.b2);
  ln_l2_grad<T>(G2, in.Y, in.gamma, in.beta, in.eps, G2);
  View<T> G1 = arena.take(m, F);  // [m, F]
  matmul_nt<T>(G2, W.W2, G1);
  gelu_tanh_derivative<T>(Z1);
  for (Index r = 0; r < m; ++r) simd::mul(G1.row(r), Z1.row(r), G1.row(r), F);
  T* acc1 = arena.take(1, F).row(0);
  View<T> zbar2 = arena.take(1, d);
  T* acc2 = arena.take(1, d).row(0);
  for (Index i = 0; i < m; ++i) {
    const T lr = in.lr[i], s = in.s[i];
    detail::rank1_update_and_apply<T>(sums.W1, lr, in.K.row(i), G1.row(i), in.Q.row(i), acc1);
    simd::axpy(lr, G1.row(i), sums.b1.row(0), F);
    T* xbar2 = Xbar2.row(i);
    detail::subtract_scaled<T>(xbar2, s, acc1, sums.b1.row(0), F);
    gelu_tanh<T>(Xbar2.middle_rows(i, 1));
    // Layer 2: one sweep over W2 and sum_W2 per token.
    std::copy_n(W.b2.row(0), d, zbar2.row(0));
    std::fill_n(acc2, d, T(0));
    for (Index r = 0; r < F; ++r) {
      simd::axpy(lr * X2(i, r), G2.row(i), sums.W2.row(r), d);
      simd::axpy(xbar2[r], sums.W2.row(r), acc2, d);
      simd::axpy(xbar2[r], W.W2.row(r), zbar2.row(0), d);
    }
    simd::axpy(lr, G2.row(i), sums.b2.row(0), d);
    detail::subtract_scaled<T>(zbar2.row(0), s, acc2, sums.b2.row(0), d);
    detail::residual_layer_norm<T>(in.Q.middle_rows(i, 1), zbar2, in.gamma, in.beta, in.eps, in.out.middle_rows(i, 1));
  }
  if (commit) {
    const T s_last = in.s[m - 1];
    detail::commit_sums<T>(W.W1, sums.W1, s_last);
    detail::commit_sums<T>(W.b1, sums.b1, s_last);
    detail::commit_sums<T>(W.W2, sums.W2, s_last);
    detail::commit_sums<T>(W.b2, sums.b2, s_last);
  }
}

/// Dispatches on the inner model.
template <class T>
void primal_segment(Kind kind, HeadParams<T> W, HeadParams<T> sums, const Segment<T>& in, bool commit, Arena<T>& arena) {
  if (kind == Kind::linear) primal_linear<T>(W, sums, in, commit, arena);
  else primal_mlp<T>(W, sums, in, commit, arena);
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
