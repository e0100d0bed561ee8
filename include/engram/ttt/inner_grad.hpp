// The pieces both forms of the inner-loop backward share (derivation: inner_backward.hpp): one
// segment's adjoints, the backward of the causal eta mask, of the end-of-mini-batch update, of the
// training view (the inner gradient at the start weights) and of the stacked input products.
#pragma once

#include "engram/core/ops_backward.hpp"
#include "engram/ttt/inner.hpp"
#include "engram/ttt/ln_l2_backward.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// The adjoints one segment of one head produces (m rows at in-mini-batch positions 0 .. m-1).
template <class T>
struct SegmentGrads {
  View<T> dQ, dK, dY;      ///< [m, d], overwritten: dL/dQ, dL/dK (rotated), dL/dY (target)
  T* dlr = nullptr;        ///< [m], overwritten: dL/d eta_t
  T* ds = nullptr;         ///< [m], overwritten: dL/ds_i of the token scales
  T* dgamma = nullptr;     ///< [d], accumulated: the inner LayerNorm's gamma
  T* dbeta = nullptr;      ///< [d], accumulated
};

/// Analytic FLOPs of one segment's backward (recomputation included), as executed; see
/// inner_flops for the forward.
inline double inner_backward_flops(Kind kind, InnerForm form, Index m, Index d, Index F) {
  const double md = double(m) * double(d), mm = double(m) * double(m), mdF = md * double(F);
  if (kind == Kind::linear) return form == InnerForm::dual ? 16.0 * mdF + 12.0 * mm * double(d) : 26.0 * mdF;
  return form == InnerForm::dual ? 40.0 * mdF + 12.0 * mm * double(d + F) : 58.0 * mdF;
}

/// Arena elements one head's segment backward of b rows needs (both forms, both kinds).
template <class T>
Index backward_arena_capacity(Index b, Index d, Index F) {
  const Index wide = padded_cols<T>(std::max({F, b, d}));
  return (34 * b + 3 * d + 3 * F + 16) * wide;
}

namespace detail {

// gelu_tanh''(x) in place: with u = c (x + a x^3), t = tanh u, u' = c (1 + 3 a x^2), u'' = 6 a c x,
// gelu' = (1 + t) / 2 + x (1 - t^2) u' / 2, so gelu'' = (1 - t^2) (u' + x (u'' - 2 t u'^2) / 2).
template <class T>
void gelu_tanh_second_derivative(View<T> x) {
  const T c = ENGRAM_ARCH_NAMESPACE::detail::kSqrt2OverPi<T>, a = ENGRAM_ARCH_NAMESPACE::detail::kGeluCubic<T>;
  for (Index r = 0; r < x.rows(); ++r) {
    T* v = x.row(r);
    for (Index i = 0; i < x.cols(); ++i) {
      const T z = v[i], t = std::tanh(c * (z + a * z * z * z)), du = c * (T(1) + T(3) * a * z * z);
      v[i] = (T(1) - t * t) * (du + T(0.5) * z * (T(6) * a * c * z - T(2) * t * du * du));
    }
  }
}

// Backward of M = E o (A + 1), E_ij = s_i lr_j for j <= i (the causal eta mask of dual.hpp).
// In: dm [m, m] = dL/dM (read on and below the diagonal); out: dm <- dL/dA = dM o E (zero above the
// diagonal), ds_i += sum_j dM_ij lr_j (A_ij + 1), dlr_j += sum_i dM_ij s_i (A_ij + 1).
template <class T>
void causal_eta_mask_backward(View<T> dm, ConstView<T> a, const T* s, const T* lr, T* ds, T* dlr) {
  for (Index i = 0; i < dm.rows(); ++i) {
    T* row = dm.row(i);
    const T* ar = a.row(i);
    T acc = 0;
    for (Index j = 0; j <= i; ++j) {
      const T p = row[j] * (ar[j] + T(1));
      acc += p * lr[j];
      dlr[j] += p * s[i];
      row[j] *= s[i] * lr[j];
    }
    ds[i] += acc;
    std::fill(row + i + 1, row + dm.cols(), T(0));
  }
}

// Backward of the end-of-mini-batch update of one layer, W' = W - c X^T (lr o G), b' = b - c sum_j
// lr_j G_j (c = s_last), for the parts that do not flow into W itself (the identity, dW += dW', is
// the caller's: dW holds dW' in place). With U = X dW' + db' [m, n_out]:
//   dG = -c lr o U (overwritten), dX -= c (lr o G) dW'^T (accumulated), dlr_j -= c <G_j, U_j>,
//   ds_last -= sum_j lr_j <G_j, U_j>.
// X: [m, n_in], G: [m, n_out], lrG = lr o G; dWp [n_in, n_out], dbp [1, n_out].
template <class T>
void update_backward(ConstView<T> X, ConstView<T> G, ConstView<T> lrG, const T* lr, T c, ConstView<T> dWp, ConstView<T> dbp,
                     View<T> dG, View<T> dX, T* dlr, T& ds_last, Arena<T>& arena) {
  const Index m = X.rows(), n = G.cols();
  View<T> U = arena.take(m, n);
  matmul<T>(X, dWp, U);
  add_row<T>(U, dbp);
  for (Index j = 0; j < m; ++j) {
    const T e = simd::dot(G.row(j), U.row(j), n);
    dlr[j] -= c * e;
    ds_last -= lr[j] * e;
    const T* u = U.row(j);
    T* dg = dG.row(j);
    const T f = -c * lr[j];
    for (Index i = 0; i < n; ++i) dg[i] = f * u[i];
  }
  gemm<T>(lrG, Trans::no, dWp, Trans::yes, dX, -c, T(1));
}

// The input products' backward: Z = [K; Q] W + b (stacked, 2m rows; dual.hpp's stacked_product),
// with DZ = dL/dZ: dW += [K; Q]^T DZ, db += column sums of DZ, dKQ += DZ W^T.
template <class T>
void stacked_product_backward(ConstView<T> KQ, ConstView<T> DZ, ConstView<T> W, View<T> dW, View<T> db, View<T> dKQ) {
  gemm<T>(KQ, Trans::yes, DZ, Trans::no, dW, T(1), T(1));
  add_column_sums<T>(DZ, T(1), db);
  gemm<T>(DZ, Trans::no, W, Trans::yes, dKQ, T(1), T(1));
}

// [K; Q] [2m, d] (the stacked inputs of both views).
template <class T>
View<T> stack_rows(ConstView<T> K, ConstView<T> Q, Arena<T>& arena) {
  const Index m = K.rows();
  View<T> KQ = arena.take(2 * m, K.cols());
  copy<T>(K, KQ.middle_rows(0, m));
  copy<T>(Q, KQ.middle_rows(m, m));
  return KQ;
}

// The training view of TTT-MLP recomputed at the start weights (the forward of dual_mlp/primal_mlp).
template <class T>
struct MlpTrainView {
  View<T> KQ;  // [2m, d]
  View<T> Z;   // [2m, F]: rows 0..m-1 Z1 = K W1 + b1, rows m..2m-1 Q W1 + b1 (the test view's start)
  View<T> X2, D1, H1, G1;  // [m, F]: gelu(Z1), gelu'(Z1), G2 W2^T, G1 = H1 o D1
  View<T> Z2, G2;          // [m, d]: X2 W2 + b2, dl/dZ2
  View<T> Z1() const { return Z.middle_rows(0, KQ.rows() / 2); }
};

template <class T>
MlpTrainView<T> mlp_train_view(HeadParams<T> W, const Segment<T>& in, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols(), F = W.W1.cols();
  MlpTrainView<T> v;
  v.KQ = stack_rows<T>(in.K, in.Q, arena);
  v.Z = arena.take(2 * m, F);
  matmul<T>(v.KQ, W.W1, v.Z);
  add_row<T>(v.Z, W.b1);
  v.X2 = arena.take(m, F);
  v.D1 = arena.take(m, F);
  copy<T>(v.Z1(), v.X2);
  copy<T>(v.Z1(), v.D1);
  gelu_tanh<T>(v.X2);
  gelu_tanh_derivative<T>(v.D1);
  v.Z2 = arena.take(m, d);
  matmul<T>(v.X2, W.W2, v.Z2);
  add_row<T>(v.Z2, W.b2);
  v.G2 = arena.take(m, d);
  ln_l2_grad<T>(v.Z2, in.Y, in.gamma, in.beta, in.eps, v.G2);
  v.H1 = arena.take(m, F);
  matmul_nt<T>(v.G2, W.W2, v.H1);
  v.G1 = arena.take(m, F);
  for (Index r = 0; r < m; ++r) simd::mul(v.H1.row(r), v.D1.row(r), v.G1.row(r), F);
  return v;
}

// Backward of the MLP training view, given dG1 [m, F], dG2 [m, d], dX2 [m, F] (all consumed: modified
// in place) and DZ [2m, F] whose rows m..2m-1 already hold the test view's dL/d(Q W1 + b1):
// G1 = (G2 W2^T) o gelu'(Z1) -> dG2 += (dG1 o D1) W2, dW2 += (dG1 o D1)^T G2, dZ1 = dG1 o H1 o gelu''(Z1);
// G2 = ln_l2_grad(Z2, Y) -> dZ2, dY, dgamma, dbeta; Z2 = X2 W2 + b2 -> dX2 += dZ2 W2^T,
// dW2 += X2^T dZ2, db2 += sum dZ2; X2 = gelu(Z1) -> dZ1 += dX2 o D1; then the stacked input products
// (dW1, db1, dKQ += DZ W1^T).
template <class T>
void mlp_train_view_backward(HeadParams<T> W, const Segment<T>& in, const MlpTrainView<T>& v, View<T> dG1, View<T> dG2,
                             View<T> dX2, View<T> DZ, HeadParams<T> dW, const SegmentGrads<T>& g, View<T> dKQ, Arena<T>& arena) {
  const Index m = in.Q.rows(), d = in.Q.cols(), F = W.W1.cols();
  View<T> dZ1 = DZ.middle_rows(0, m);
  // dZ1 = dG1 o H1 o gelu''(Z1), then dG1 <- dH1 = dG1 o D1
  copy<T>(v.Z1(), dZ1);
  gelu_tanh_second_derivative<T>(dZ1);
  for (Index r = 0; r < m; ++r) {
    T* dz = dZ1.row(r);
    T* dg = dG1.row(r);
    const T* h = v.H1.row(r);
    const T* d1 = v.D1.row(r);
    for (Index i = 0; i < F; ++i) {
      dz[i] *= dg[i] * h[i];
      dg[i] *= d1[i];
    }
  }
  gemm<T>(dG1, Trans::no, W.W2, Trans::no, dG2, T(1), T(1));
  gemm<T>(dG1, Trans::yes, v.G2, Trans::no, dW.W2, T(1), T(1));
  View<T> dZ2 = arena.take(m, d);
  ln_l2_grad_backward<T>(v.Z2, in.Y, in.gamma, in.beta, in.eps, dG2, dZ2, g.dY, g.dgamma, g.dbeta);
  gemm<T>(dZ2, Trans::no, W.W2, Trans::yes, dX2, T(1), T(1));
  gemm<T>(v.X2, Trans::yes, dZ2, Trans::no, dW.W2, T(1), T(1));
  add_column_sums<T>(dZ2, T(1), dW.b2);
  for (Index r = 0; r < m; ++r) {
    T* dz = dZ1.row(r);
    const T* dx = dX2.row(r);
    const T* d1 = v.D1.row(r);
    for (Index i = 0; i < F; ++i) dz[i] += dx[i] * d1[i];
  }
  stacked_product_backward<T>(v.KQ, DZ, W.W1, dW.W1, dW.b1, dKQ);
}

// dK, dQ of the segment from the stacked [dK; dQ] [2m, d].
template <class T>
void unstack_rows(ConstView<T> dKQ, const SegmentGrads<T>& g) {
  const Index m = g.dK.rows();
  copy<T>(dKQ.middle_rows(0, m), g.dK);
  copy<T>(dKQ.middle_rows(m, m), g.dQ);
}

}  // namespace detail

}  // namespace ttt
ENGRAM_NAMESPACE_END
