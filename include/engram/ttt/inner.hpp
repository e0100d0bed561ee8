// The pieces both forms of the TTT inner loop share: one head's weights as views, a mini-batch
// segment's inputs, the per-thread scratch arena, token scales, and the analytic FLOP counts.
#pragma once

#include <algorithm>

#include "engram/core/gemm.hpp"
#include "engram/core/ops.hpp"
#include "engram/core/workspace.hpp"
#include "engram/ttt/config.hpp"
#include "engram/ttt/ln_l2_grad.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// One head's inner model: W1 [d, F], b1 [1, F] and, for TTT-MLP, W2 [F, d], b2 [1, d]. The same
/// views describe the weights at the start of a mini-batch and the pending gradient sums.
template <class T>
struct HeadParams {
  View<T> W1, b1, W2, b2;
};

/// The tokens of one head inside one mini-batch (m <= b rows at in-mini-batch positions p .. p+m-1).
template <class T>
struct Segment {
  ConstView<T> Q, K, Y;  ///< [m, d]: rotated queries and keys; Y = V - K, the reconstruction target
  const T* lr = nullptr;  ///< [m]: eta(x_t) = base_lr * sigmoid(x_t . w_h + c_h) / d
  const T* s = nullptr;   ///< [m]: token scales s_p .. s_{p+m-1}
  const T* gamma = nullptr;  ///< [d]: this head's inner LayerNorm
  const T* beta = nullptr;   ///< [d]
  T eps = T(1e-6);
  View<T> out;  ///< [m, d]: q_t + LN(f_res(q_t; W_t))
};

/// s_i = max(0, 1/(i+1) + learnable_token_idx[i]): scales the gradient sum of the token at
/// in-mini-batch position i (with the init 0, W_i uses the mean of the gradients so far).
template <class T>
T token_scale(const T* token_idx, Index i) {
  return std::max(T(0), T(1) / T(i + 1) + token_idx[i]);
}

/// Carves padded matrices out of a per-thread scratch buffer (no allocation once warm). One Arena per
/// thread at a time: a second one with a larger capacity would move the buffer under the first.
template <class T>
class Arena {
 public:
  explicit Arena(Index capacity) : base_(thread_scratch<Arena, 0, T>(capacity)), capacity_(capacity) {}
  View<T> take(Index rows, Index cols) {
    const Index stride = padded_cols<T>(cols);
    check(used_ + rows * stride <= capacity_, "ttt::Arena", "scratch of ", capacity_, " elements exhausted");
    View<T> v(base_ + used_, rows, cols, stride);
    used_ += rows * stride;
    return v;
  }
  /// Releases everything taken (the views stay valid until taken again).
  void reset() { used_ = 0; }
  /// Elements one head's mini-batch of b rows needs (both forms, both kinds; d, F the inner widths):
  /// at most 9 b rows of the widest operand plus the segment's learning rates and token scales.
  static Index capacity_for(Index b, Index d, Index F) {
    const Index wide = padded_cols<T>(std::max({F, b, d}));
    return (10 * b + 8) * wide;
  }

 private:
  T* base_;
  Index capacity_;
  Index used_ = 0;
};

namespace detail {
// Adds the row vector bias [1, n] to every row of x [m, n].
template <class T>
void add_row(View<T> x, ConstView<T> bias) {
  for (Index r = 0; r < x.rows(); ++r) simd::add(x.row(r), bias.row(0), x.row(r), x.cols());
}
// x[r] *= scale[r] for every row.
template <class T>
void scale_rows(View<T> x, const T* scale) {
  for (Index r = 0; r < x.rows(); ++r) simd::scale(scale[r], x.row(r), x.cols());
}
// out = q + LN_{gamma,beta}(z) row by row (the inner model's output with its residual); z may alias out.
template <class T>
void residual_layer_norm(ConstView<T> q, ConstView<T> z, const T* gamma, const T* beta, T eps, View<T> out) {
  layer_norm<T>(z, gamma, beta, eps, out);
  for (Index r = 0; r < out.rows(); ++r) simd::add(out.row(r), q.row(r), out.row(r), out.cols());
}
// sum_rows(x) [1, n] accumulated into acc with factor alpha.
template <class T>
void add_column_sums(ConstView<T> x, T alpha, View<T> acc) {
  for (Index r = 0; r < x.rows(); ++r) simd::axpy(alpha, x.row(r), acc.row(0), x.cols());
}
// [K; Q] W + bias [2m, F] in one product (one packing of W): rows 0..m-1 are the training view
// K W + b, rows m..2m-1 the test view's Q W + b, both at the start weights.
// z [F] = bias + x [k] W [k, F]: four registers of z held across all k rows of W (one broadcast
// and four FMAs per row), the columns past the last whole group of four scalar.
template <class T>
void row_times(const T* x, ConstView<T> W, const T* bias, T* z) {
  using B = simd::batch<T>;
  constexpr Index Wd = simd::width<T>, G = 4 * Wd;
  const Index F = W.cols(), k = W.rows(), Fg = F / G * G;
  for (Index c0 = 0; c0 < Fg; c0 += G) {
    B acc[4];
    for (int j = 0; j < 4; ++j) acc[j] = simd::load(bias + c0 + j * Wd);
    for (Index r = 0; r < k; ++r) {
      const B xr(x[r]);
      const T* w = W.row(r) + c0;
      for (int j = 0; j < 4; ++j) acc[j] = simd::fmadd(xr, simd::load(w + j * Wd), acc[j]);
    }
    for (int j = 0; j < 4; ++j) simd::store(z + c0 + j * Wd, acc[j]);
  }
  for (Index c = Fg; c < F; ++c) {
    T s = bias[c];
    for (Index r = 0; r < k; ++r) s += x[r] * W(r, c);
    z[c] = s;
  }
}
// A decode step (m = 1) and short partial mini-batches (m <= 2) take row_times instead: a [2, 64] x
// [64, 64] product packs more than it multiplies (Eigen's packing was about half of a one-token
// inner step). Measured on a Xeon (bench_ttt inner_decode, 16 tokens x 12 heads): TTT-Linear
// 0.297-0.311 -> 0.209-0.211 ms, TTT-MLP 2.98-3.03 -> 2.68-2.76 ms.
inline constexpr Index kStackedAxpyRows = 2;
template <class T>
View<T> stacked_product(ConstView<T> K, ConstView<T> Q, ConstView<T> W, ConstView<T> bias, Arena<T>& arena) {
  const Index m = K.rows();
  if (m <= kStackedAxpyRows) {
    View<T> Z = arena.take(2 * m, W.cols());
    for (Index i = 0; i < 2 * m; ++i) row_times<T>(i < m ? K.row(i) : Q.row(i - m), W, bias.row(0), Z.row(i));
    return Z;
  }
  View<T> KQ = arena.take(2 * m, K.cols());
  copy<T>(K, KQ.middle_rows(0, m));
  copy<T>(Q, KQ.middle_rows(m, m));
  View<T> Z = arena.take(2 * m, W.cols());
  matmul<T>(KQ, W, Z);
  add_row<T>(Z, bias);
  return Z;
}
template <class T>
void set_zero(View<T> x) {
  for (Index r = 0; r < x.rows(); ++r) std::fill_n(x.row(r), x.cols(), T(0));
}
}  // namespace detail

/// Analytic FLOPs of the inner loop for m tokens of one head (a multiply-add counts 2), as executed.
/// Dual, TTT-Linear: K W0, Q W0, K^T(lr G) 6 m d^2; Q K^T and the masked (E o (QK^T+1)) G 4 m^2 d.
/// Dual, TTT-MLP: seven [m, d] x [d, F]-sized products 14 m d F; four m x m products 4 m^2 (d + F).
/// Primal, TTT-Linear: K W0, Q W0, the rank-1 sum update and q . sum 8 m d^2.
/// Primal, TTT-MLP: 18 m d F (the same four per layer plus G2 W2^T and the per-token x2 W2).
inline double inner_flops(Kind kind, InnerForm form, Index m, Index d, Index F) {
  const double md = double(m) * double(d), mm = double(m) * double(m);
  if (kind == Kind::linear) return form == InnerForm::dual ? 6.0 * md * double(d) + 4.0 * mm * double(d) : 8.0 * md * double(d);
  return form == InnerForm::dual ? 14.0 * md * double(F) + 4.0 * mm * double(d + F) : 18.0 * md * double(F);
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
