// The mini-batch TTT driver (ttt.md 3.6): splits n tokens of every head into mini-batch segments
// from the state's position and runs each in the dual or the primal form, one group of heads per thread.
#pragma once

#include "engram/core/flops.hpp"
#include "engram/core/parallel.hpp"
#include "engram/ttt/dual.hpp"
#include "engram/ttt/primal.hpp"
#include "engram/ttt/state.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// Whole aligned mini-batches take the dual form; partial ones (the start of a call that begins
/// mid-mini-batch, a trailing remainder) and decode take the primal form. (The reference also runs a
/// trailing remainder that starts on a boundary in the dual form; the two agree to rounding.)
inline bool uses_dual(InnerForm form, Index p, Index m, Index b) { return form == InnerForm::dual && p == 0 && m == b; }

/// Runs the inner loop over n tokens starting at st.position (which it does not advance), one group
/// of heads per thread.
/// Q, K, Y, O: [n, H * d] (head h in columns h*d .. h*d+d-1); lr: [n, H] eta(x_t) per head;
/// token_idx: [b] learnable_token_idx; gamma, beta: [H, d]. Updates the state's weights and pending
/// sums; adds ttt_inner FLOPs.
template <class T>
void run_inner(const Config& c, InnerForm form, ConstView<T> Q, ConstView<T> K, ConstView<T> Y, ConstView<T> lr,
               const T* token_idx, const Tensor<T>& gamma, const Tensor<T>& beta, State<T>& st, View<T> O,
               FlopCounter* flops = nullptr) {
  const Index n = Q.rows(), H = c.n_heads, d = c.head_dim(), F = c.inner_dim(), b = c.mini_batch;
  const Index pos0 = st.position;
  const Index arena = Arena<T>::capacity_for(b, d, F);
  // Each thread owns a contiguous group of heads and walks time in the outer loop, so a mini-batch
  // reads rows t..t+m-1 of Q, K, Y across the group's columns in order (head-outer order strides
  // through all T rows per head and runs into cache misses). Heads never interact: the grouping
  // does not change any result.
  const Index groups = std::clamp<Index>(num_threads(), 1, H);
  parallel_for(0, groups, [&](Index group) {
    const Index h0 = group * H / groups, h1 = (group + 1) * H / groups;
    Arena<T> scratch(arena);
    for (Index t = 0; t < n;) {
      const Index p = (pos0 + t) % b, m = std::min(b - p, n - t);
      const bool commit = p + m == b, dual = uses_dual(form, p, m, b);
      for (Index h = h0; h < h1; ++h) {
        scratch.reset();
        T* eta = scratch.take(1, m).row(0);    // [m] this head's learning rates, contiguous
        T* scale = scratch.take(1, m).row(0);  // [m] s_p .. s_{p+m-1}
        for (Index i = 0; i < m; ++i) eta[i] = lr(t + i, h), scale[i] = token_scale(token_idx, p + i);
        Segment<T> seg;
        seg.Q = Q.block(t, m, h * d, d);
        seg.K = K.block(t, m, h * d, d);
        seg.Y = Y.block(t, m, h * d, d);
        seg.lr = eta;
        seg.s = scale;
        seg.gamma = gamma.row(h);
        seg.beta = beta.row(h);
        seg.eps = T(c.inner_eps);
        seg.out = O.block(t, m, h * d, d);
        if (dual) dual_segment<T>(c.kind, st.weights(h), st.grads(h), seg, commit, scratch);
        else primal_segment<T>(c.kind, st.weights(h), st.grads(h), seg, commit, scratch);
      }
      t += m;
    }
  });
  if (flops) {
    for (Index t = 0; t < n;) {
      const Index p = (pos0 + t) % b, m = std::min(b - p, n - t);
      const InnerForm f = uses_dual(form, p, m, b) ? InnerForm::dual : InnerForm::primal;
      flops->add(FlopCategory::ttt_inner, double(H) * inner_flops(c.kind, f, m, d, F));
      t += m;
    }
  }
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
