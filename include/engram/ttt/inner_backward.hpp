// The outer-loop backward of mini-batch TTT: a training forward that saves each mini-batch's start
// weights, and the backward that walks the mini-batches of every head in reverse, recomputing each
// one from its saved start weights and carrying the adjoint of the inner weights back across
// mini-batch boundaries (the inner loop is a recurrence in W).
//
// Derivation (one head, one mini-batch segment of m rows, row-vector convention, TTT-Linear;
// dual.hpp's forward). Start weights W [d, F], b [F]; E_ij = s_i lr_j for j <= i, 0 above.
//   Z = K W + b            G = ln_l2_grad(Z, Y)  (the inner gradient at W)
//   A = Q K^T              M = E o (A + 1)
//   Zbar = Q W + b - M G   out = Q + LN(Zbar)
//   W' = W - c K^T (lr o G),  b' = b - c sum_j lr_j G_j   (c = s_{m-1}; the next segment's start)
// Given dout and the adjoint (dW', db') of the end weights, reverse mode gives:
//   end weights:  U = K dW' + db',  dG = -c lr o U,  dK = -c (lr o G) dW'^T,  dlr_j = -c <G_j, U_j>,
//                 ds_{m-1} = -sum_j lr_j <G_j, U_j>,  dW = dW', db = db'   (the identity path)
//   output:       dQ = dout,  dZbar = LN backward of dout (+ dgamma, dbeta)
//   test view:    dW += Q^T dZbar,  db += sum dZbar,  dQ += dZbar W^T,  dG -= M^T dZbar,
//                 dM = -dZbar G^T; through the mask P = dM o (A + 1): ds_i += sum_j P_ij lr_j,
//                 dlr_j += sum_i P_ij s_i, dA = dM o E: dQ += dA K, dK += dA^T Q
//   inner grad:   (dZ, dY, dgamma, dbeta) = VJP of ln_l2_grad with dG -- the second-order path,
//                 closed form in ln_l2_backward.hpp
//   train view:   dW += K^T dZ,  db += sum dZ,  dK += dZ W^T
// (the two input products are stacked: [K; Q]^T [dZ; dZbar] and [dZ; dZbar] W^T, one GEMM each).
// TTT-MLP (ttt.md 3.3) chains the same pieces per layer: the test view runs through
// Zbar2 = Xbar2 W2 + b2 - M2 G2 with M2 = E o (Xbar2 X2^T + 1) (so dX2 gets dA2^T Xbar2), then
// Xbar2 = gelu(Zbar1) and Zbar1 = Q W1 + b1 - M1 G1; the training view G1 = (G2 W2^T) o gelu'(Z1)
// adds dW2 += (dG1 o gelu'(Z1))^T G2, dG2 += (dG1 o gelu'(Z1)) W2 and dZ1 = dG1 o (G2 W2^T) o
// gelu''(Z1) -- a second-order path through the GELU as well -- before G2 = ln_l2_grad(Z2, Y),
// Z2 = gelu(Z1) W2 + b2 and Z1 = K W1 + b1. Both layers' updates add their end-weight terms.
// The primal form (primal.hpp) computes the same function token by token: zbar_i = q_i W + b -
// s_i (q_i S_i + sb_i), S_i = S_{i-1} + lr_i k_i^T g_i. Its backward (primal_backward.hpp) walks i
// from m-1 down with the adjoint dS of S_i (initially -c dW'), rebuilding S_{i-1} = S_i -
// lr_i k_i^T g_i as it goes; in exact arithmetic both give the same gradients (tested in double).
// Across segments: the adjoint of a segment's start weights is the adjoint of the previous
// segment's end weights, so the driver runs the segments of each head last to first, keeping
// one dW per head; after segment 0 it is dL/dW0 of the sequence. The layer maps dlr to the gate
// (eta = base_lr sigmoid(x w_h + c_h) / d) and ds to learnable_token_idx through the clamp
// s_i = max(0, 1/(i+1) + idx_i) (gradient where 1/(i+1) + idx_i >= 0, as torch.clamp_min).
#pragma once

#include <vector>

#include "engram/core/flops.hpp"
#include "engram/core/parallel.hpp"
#include "engram/ttt/dual.hpp"
#include "engram/ttt/inner_loop.hpp"
#include "engram/ttt/primal.hpp"
#include "engram/ttt/primal_backward.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// Mini-batch segments of a sequence of n tokens read from a fresh state (all start at position 0).
inline Index n_segments(Index n, Index b) { return (n + b - 1) / b; }

/// The inner weights of every head, one [H * rows, cols] matrix per tensor (W1 [H d, F], b1 [H, F],
/// W2 [H F, d], b2 [H, d]): the layer's initial weights, their gradients, or one segment's saved
/// start weights.
template <class T>
struct InnerWeights {
  View<T> W1, b1, W2, b2;
  Index n_heads() const { return b1.rows(); }
  HeadParams<T> head(Index h) const {
    const Index d = W1.rows() / n_heads(), F = W1.cols();
    HeadParams<T> p{W1.middle_rows(h * d, d), b1.middle_rows(h, 1), {}, {}};
    if (!W2.empty()) {
      p.W2 = W2.middle_rows(h * F, F);
      p.b2 = b2.middle_rows(h, 1);
    }
    return p;
  }
  void set_zero() const {
    for (View<T> v : {W1, b1, W2, b2}) detail::set_zero<T>(v);
  }
};

/// The start weights of every segment of one sequence: segment k, head h is rows
/// [(k H + h) d, +d) of W1 [S H d, F] (and likewise for b1 [S H, F], W2 [S H F, d], b2 [S H, d]).
template <class T>
struct SavedWeights {
  View<T> W1, b1, W2, b2;
  Index n_heads = 0;
  Index n_segments() const { return b1.rows() / n_heads; }
  InnerWeights<T> segment(Index k) const {
    const Index d = W1.rows() / b1.rows(), F = W1.cols();
    InnerWeights<T> w{W1.middle_rows(k * n_heads * d, n_heads * d), b1.middle_rows(k * n_heads, n_heads), {}, {}};
    if (!W2.empty()) {
      w.W2 = W2.middle_rows(k * n_heads * F, n_heads * F);
      w.b2 = b2.middle_rows(k * n_heads, n_heads);
    }
    return w;
  }
};

namespace detail {
template <class T>
void copy_params(HeadParams<T> src, HeadParams<T> dst) {
  copy<T>(src.W1, dst.W1);
  copy<T>(src.b1, dst.b1);
  if (!src.W2.empty()) {
    copy<T>(src.W2, dst.W2);
    copy<T>(src.b2, dst.b2);
  }
}
// Zeroed pending sums of one head, carved from the arena.
template <class T>
HeadParams<T> zero_sums(Index d, Index F, bool mlp, Arena<T>& arena) {
  HeadParams<T> s{arena.take(d, F), arena.take(1, F), {}, {}};
  if (mlp) s.W2 = arena.take(F, d), s.b2 = arena.take(1, d);
  zero_params(s);
  return s;
}
// The segment inputs of head h, rows t .. t+m-1, with its learning rates and token scales copied
// into contiguous arena rows.
template <class T>
Segment<T> segment_of(const Config& c, ConstView<T> Q, ConstView<T> K, ConstView<T> Y, ConstView<T> lr, const T* token_idx,
                      const Tensor<T>& gamma, const Tensor<T>& beta, Index t, Index m, Index h, Arena<T>& arena) {
  const Index d = c.head_dim();
  T* eta = arena.take(1, m).row(0);
  T* scale = arena.take(1, m).row(0);
  for (Index i = 0; i < m; ++i) eta[i] = lr(t + i, h), scale[i] = token_scale(token_idx, i);
  Segment<T> seg;
  seg.Q = Q.block(t, m, h * d, d);
  seg.K = K.block(t, m, h * d, d);
  seg.Y = Y.block(t, m, h * d, d);
  seg.lr = eta;
  seg.s = scale;
  seg.gamma = gamma.row(h);
  seg.beta = beta.row(h);
  seg.eps = T(c.inner_eps);
  return seg;
}
}  // namespace detail

/// The inner loop over one training sequence of n tokens from a fresh state whose weights are W0,
/// saving the start weights of each of its n_segments(n, b) segments into `saved`. Outputs equal
/// run_inner's on a fresh state (the same segment kernels; the last segment's end weights are not
/// formed, they would serve no later token). Q, K, Y, O: [n, H d]; lr: [n, H]; W0 the layer's W1,
/// b1 (W2, b2) as [H rows, cols] matrices.
template <class T>
void run_inner_train(const Config& c, InnerForm form, ConstView<T> Q, ConstView<T> K, ConstView<T> Y, ConstView<T> lr,
                     const T* token_idx, const Tensor<T>& gamma, const Tensor<T>& beta, const InnerWeights<T>& W0,
                     const SavedWeights<T>& saved, View<T> O, FlopCounter* flops = nullptr) {
  const Index n = Q.rows(), H = c.n_heads, d = c.head_dim(), F = c.inner_dim(), b = c.mini_batch;
  const Index S = n_segments(n, b);
  check(saved.n_heads == H && saved.n_segments() == S && saved.W1.rows() == S * H * d && saved.W1.cols() == F,
        "ttt::run_inner_train", "saved start weights are not [", S, " segments x ", H, " heads] of [", d, ", ", F, "]");
  const bool mlp = c.kind == Kind::mlp;
  const Index arena = Arena<T>::capacity_for(b, d, F) + (d + F + 4) * padded_cols<T>(std::max(d, F));
  const Index groups = std::clamp<Index>(num_threads(), 1, H);
  parallel_for(0, groups, [&](Index group) {
    const Index h0 = group * H / groups, h1 = (group + 1) * H / groups;
    Arena<T> scratch(arena);
    for (Index h = h0; h < h1; ++h) detail::copy_params<T>(W0.head(h), saved.segment(0).head(h));
    for (Index k = 0; k < S; ++k) {
      const Index t = k * b, m = std::min(b, n - t);
      const bool last = k == S - 1;
      for (Index h = h0; h < h1; ++h) {
        scratch.reset();
        HeadParams<T> W = saved.segment(k).head(h);
        if (!last) {  // the segment updates a copy in place: its end weights are the next one's start
          HeadParams<T> next = saved.segment(k + 1).head(h);
          detail::copy_params<T>(W, next);
          W = next;
        }
        const HeadParams<T> sums = detail::zero_sums<T>(d, F, mlp, scratch);
        Segment<T> seg = detail::segment_of<T>(c, Q, K, Y, lr, token_idx, gamma, beta, t, m, h, scratch);
        seg.out = O.block(t, m, h * d, d);
        if (uses_dual(form, 0, m, b)) dual_segment<T>(c.kind, W, sums, seg, !last, scratch);
        else primal_segment<T>(c.kind, W, sums, seg, !last, scratch);
      }
    }
  });
  if (flops)
    for (Index k = 0; k < S; ++k) {
      const Index m = std::min(b, n - k * b);
      const InnerForm f = uses_dual(form, 0, m, b) ? InnerForm::dual : InnerForm::primal;
      flops->add(FlopCategory::ttt_inner, double(H) * inner_flops(c.kind, f, m, d, F));
    }
}

/// Where the inner backward of one sequence writes. dQ, dK, dY: [n, H d] and dlr: [n, H], overwritten;
/// dgamma, dbeta: [H, d] and dtoken_idx: [b], accumulated (dtoken_idx is dL/ds through the clamp);
/// dW0: dL/dW0 of the sequence's initial inner weights, overwritten.
template <class T>
struct InnerGrads {
  View<T> dQ, dK, dY, dlr;
  View<T> dgamma, dbeta;
  T* dtoken_idx = nullptr;
  InnerWeights<T> dW0;
};

/// Backward of run_inner_train over one sequence: dO [n, H d] = dL/dO; the other inputs as given to
/// run_inner_train, `saved` as it left it. Heads in groups, one group per thread; each thread walks
/// the segments from last to first.
template <class T>
void run_inner_backward(const Config& c, InnerForm form, ConstView<T> Q, ConstView<T> K, ConstView<T> Y, ConstView<T> lr,
                        const T* token_idx, const Tensor<T>& gamma, const Tensor<T>& beta, const SavedWeights<T>& saved,
                        ConstView<T> dO, const InnerGrads<T>& out, FlopCounter* flops = nullptr) {
  const Index n = Q.rows(), H = c.n_heads, d = c.head_dim(), F = c.inner_dim(), b = c.mini_batch;
  const Index S = n_segments(n, b);
  check(saved.n_heads == H && saved.n_segments() == S, "ttt::run_inner_backward", "saved start weights cover ",
        saved.n_segments(), " segments of ", saved.n_heads, " heads, expected ", S, " of ", H);
  check_shape(dO, n, H * d, "ttt::run_inner_backward", "dO");
  const Index arena = backward_arena_capacity<T>(b, d, F) + 4 * padded_cols<T>(b);
  const Index groups = std::clamp<Index>(num_threads(), 1, H);
  std::vector<T> ds_partial(std::size_t(groups * b), T(0));  // dL/ds per thread, summed below
  parallel_for(0, groups, [&](Index group) {
    const Index h0 = group * H / groups, h1 = (group + 1) * H / groups;
    Arena<T> scratch(arena);
    T* ds_sum = ds_partial.data() + group * b;
    for (Index h = h0; h < h1; ++h) detail::zero_params(out.dW0.head(h));
    for (Index k = S - 1; k >= 0; --k) {
      const Index t = k * b, m = std::min(b, n - t);
      const bool commit = k != S - 1;
      for (Index h = h0; h < h1; ++h) {
        scratch.reset();
        const Segment<T> seg = detail::segment_of<T>(c, Q, K, Y, lr, token_idx, gamma, beta, t, m, h, scratch);
        T* dlr = scratch.take(1, m).row(0);
        T* ds = scratch.take(1, m).row(0);
        SegmentGrads<T> g{out.dQ.block(t, m, h * d, d), out.dK.block(t, m, h * d, d), out.dY.block(t, m, h * d, d), dlr, ds,
                          out.dgamma.row(h), out.dbeta.row(h)};
        const HeadParams<T> W = saved.segment(k).head(h), dW = out.dW0.head(h);
        const ConstView<T> dout = dO.block(t, m, h * d, d);
        if (uses_dual(form, 0, m, b)) dual_segment_backward<T>(c.kind, W, seg, dout, commit, dW, g, scratch);
        else primal_segment_backward<T>(c.kind, W, seg, dout, commit, dW, g, scratch);
        for (Index i = 0; i < m; ++i) {
          out.dlr(t + i, h) = dlr[i];
          ds_sum[i] += ds[i];
        }
      }
    }
  });
  for (Index g = 0; g < groups; ++g)
    for (Index i = 0; i < b; ++i)
      if (T(1) / T(i + 1) + token_idx[i] >= T(0)) out.dtoken_idx[i] += ds_partial[std::size_t(g * b + i)];
  if (flops)
    for (Index k = 0; k < S; ++k) {
      const Index m = std::min(b, n - k * b);
      const InnerForm f = uses_dual(form, 0, m, b) ? InnerForm::dual : InnerForm::primal;
      flops->add(FlopCategory::ttt_inner, double(H) * inner_backward_flops(c.kind, f, m, d, F));
    }
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
