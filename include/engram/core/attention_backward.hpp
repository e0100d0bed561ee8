// Fused attention backward in the flash-attention-2 manner: probability tiles are recomputed from
// the forward's per-row log-sum-exp, so no Tq x Tk matrix ever exists; every mask kind of the
// forward (sliding window included), MHA and GQA, query offsets.
#pragma once

#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "engram/core/attention.hpp"
#include "engram/core/parallel.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"
#include "engram/core/workspace.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Arguments of attention_backward(): the forward's inputs, its output and log-sum-exp, the
/// gradient of the loss with respect to the output, and where the input gradients go. Shapes as in
/// AttentionInput; query head h reads KV head h / (n_heads / n_kv_heads). dq may alias q or dout;
/// dk and dv must not alias k or v (they are written while other key blocks are still read).
template <class T>
struct AttentionBackwardInput {
  ConstView<T> q;                          ///< [Tq, H * d] (same as forward)
  std::span<const ConstView<T>> k, v;      ///< per KV head [Tk, d]
  ConstView<T> out;                        ///< forward output [Tq, H * d]
  ConstView<T> lse;                        ///< [Tq, H] from the forward (AttentionInput::lse)
  ConstView<T> dout;                       ///< dL/dout [Tq, H * d]
  View<T> dq;                              ///< [Tq, H * d], overwritten
  std::span<const View<T>> dk, dv;         ///< per KV head [Tk, d], overwritten (may be strided column blocks)
  Index n_heads = 0, head_dim = 0;
  T scale = T(0);                          ///< 0: 1 / sqrt(d), as forward
  MaskKind mask = MaskKind::causal;
  Index offset = -1;                       ///< as forward
  ConstView<std::uint8_t> custom_mask;     ///< as forward
  Index window = 0;                        ///< as forward
};

namespace attention_detail {

struct BackwardTag {};

/// Queries per step of a backward task: a [64, kKeyBlock] probability tile and its dS (16 KB each
/// in float) stay in L1/L2 while the five products run over it.
inline constexpr Index kBackwardQueryBlock = 64;

// Per query head h: rows [h * n_q, (h + 1) * n_q) of q (scaled) and dout, padded to d_pad with
// zeros; D_i = dO_i . O_i and the forward's lse, contiguous per head.
template <class T>
struct QueryRows {
  Tensor<T> qs, dout;  // [H * n_q, d_pad]
  Tensor<T> delta, lse;  // [H, n_q]
};

// One KV head: K and V transposed into panels (the score tiles S = Q K^T and dP = dO V^T stream
// them) and K in row layout (dQ += dS K reads rows).
template <class T>
struct KeyPanels {
  Tensor<T> k_panels, v_panels;
  ConstView<T> k_rows;
  Tensor<T> k_copy;
};

template <class T>
void validate_backward(const AttentionBackwardInput<T>& in, const AttentionInput<T>& fwd) {
  constexpr const char* where = "attention_backward";
  validate(fwd);  // q, k, v, masks, offset, window: the forward's rules
  const Index n_q = in.q.rows(), hd = in.n_heads * in.head_dim, n_kv = Index(in.k.size());
  check_shape(in.out, n_q, hd, where, "out");
  check_shape(in.dout, n_q, hd, where, "dout");
  check_shape(in.dq, n_q, hd, where, "dq");
  check_shape(in.lse, n_q, in.n_heads, where, "lse");
  check(Index(in.dk.size()) == n_kv && Index(in.dv.size()) == n_kv, where, "expected ", n_kv,
        " dk and dv views (one per KV head), got ", in.dk.size(), " and ", in.dv.size());
  for (Index h = 0; h < n_kv; ++h) {
    check_shape(in.dk[h], in.k[h].rows(), in.head_dim, where, "dk[" + std::to_string(h) + "]");
    check_shape(in.dv[h], in.k[h].rows(), in.head_dim, where, "dv[" + std::to_string(h) + "]");
  }
}

// p [n, KB]: row r of the score tile, registers x0 .. x1, becomes P = exp(S - lse) where the row sees
// the key (0 elsewhere, and 0 for a row whose lse is -inf: it sees nothing).
template <class T>
void probabilities(const Plan<T>& plan, Index kv_head, T* s, Index n, Index i0, Index j0, Index bc, Index x0, Index x1,
                   const T* lse) {
  constexpr Index KB = kKeyBlock<T>;
  alignas(64) T iota[W<T>];
  for (Index e = 0; e < W<T>; ++e) iota[e] = T(e);
  const B<T> lanes = B<T>::load_aligned(iota);
  for (Index r = 0; r < n; ++r) {
    T* row = s + r * KB;
    const Visible vis = plan.visible(kv_head, i0 + r, j0, bc);
    const T l = lse[i0 + r];
    if (vis.lo >= vis.hi || l == -std::numeric_limits<T>::infinity()) {
      std::fill(row + x0 * W<T>, row + x1 * W<T>, T(0));
      continue;
    }
    const B<T> lb(l), lo(T(vis.lo)), hi(T(vis.hi));
    for (Index x = x0; x < x1; ++x) {
      B<T> p = simd::exp(simd::load(row + x * W<T>) - lb);
      if (x * W<T> < vis.lo || (x + 1) * W<T> > vis.hi) {
        const B<T> j = lanes + B<T>(T(x * W<T>));
        p = xsimd::select(j >= lo && j < hi, p, B<T>(T(0)));
      }
      simd::store(row + x * W<T>, p);
    }
    if (const std::uint8_t* m = custom_row(plan, i0 + r, j0))
      for (Index j = vis.lo; j < vis.hi; ++j)
        if (!m[j]) row[j] = T(0);
  }
}

// dp [n, KB] becomes dS = P * (dP - D) on registers x0 .. x1.
template <class T>
void score_gradients(const T* p, T* dp, Index n, Index x0, Index x1, const T* delta) {
  constexpr Index KB = kKeyBlock<T>;
  for (Index r = 0; r < n; ++r) {
    const B<T> db(delta[r]);
    for (Index x = x0; x < x1; ++x) {
      const Index c = r * KB + x * W<T>;
      simd::store(dp + c, simd::load(p + c) * (simd::load(dp + c) - db));
    }
  }
}

// dK and dV of key block kb of KV head `kv_head`, and this block's share of dQ added into dq_part
// [H * n_q, d_pad] (unscaled): for every query head of the group and every block of the queries
// that see the key block, the tiles S, P, dP, dS and the products dV += P^T dO, dK += dS^T Qs,
// dQ += dS K.
template <class T>
void backward_task(const Plan<T>& plan, const AttentionBackwardInput<T>& in, const QueryRows<T>& qr,
                   const KeyPanels<T>& kp, Index kv_head, Index kb, T* dq_part) {
  constexpr Index KB = kKeyBlock<T>, QB = kBackwardQueryBlock;
  const Index d = plan.d, d_pad = plan.d_pad, n_q = plan.n_q, nk = in.k[kv_head].rows();
  const Index j0 = kb * KB, bc = std::min(KB, nk - j0);
  T* s = thread_scratch<BackwardTag, 0, T>(QB * KB);
  T* dp = thread_scratch<BackwardTag, 1, T>(QB * KB);
  T* dk = thread_scratch<BackwardTag, 2, T>(KB * d_pad);
  T* dv = thread_scratch<BackwardTag, 3, T>(KB * d_pad);
  std::fill(dk, dk + KB * d_pad, T(0));
  std::fill(dv, dv + KB * d_pad, T(0));
  const T* k_panel = kp.k_panels.mat(kb).data();
  const T* v_panel = kp.v_panels.mat(kb).data();
  const auto [qa, qb] = plan.query_range(kv_head, j0, j0 + bc);
  for (Index g = 0; g < plan.group; ++g) {
    const Index h = kv_head * plan.group + g;
    const T* lse = qr.lse.row(h);
    const T* delta = qr.delta.row(h);
    for (Index i0 = qa; i0 < qb; i0 += QB) {
      const Index n = std::min(QB, qb - i0);
      const auto [first, last] = plan.key_range(kv_head, i0, i0 + n);
      const Index a = std::max<Index>(first - j0, 0), b = std::min(bc, last - j0);
      if (a >= b) continue;
      const Index x0 = a / W<T>, x1 = (b + W<T> - 1) / W<T>;
      const T* qs = qr.qs.row(h * n_q + i0);
      const T* dout = qr.dout.row(h * n_q + i0);
      scores_panel(qs, d_pad, n, d, k_panel, KB, s, KB, x0, x1 - x0);    // S = Qs K^T
      probabilities(plan, kv_head, s, n, i0, j0, bc, x0, x1, lse);       // P
      rank_update<T, true>(s + a, KB, b - a, n, dout, d_pad, dv + a * d_pad, d_pad, d_pad);  // dV += P^T dO
      scores_panel(dout, d_pad, n, d, v_panel, KB, dp, KB, x0, x1 - x0);  // dP = dO V^T
      score_gradients(s, dp, n, x0, x1, delta + i0);                     // dS = P (dP - D)
      rank_update<T, true>(dp + a, KB, b - a, n, qs, d_pad, dk + a * d_pad, d_pad, d_pad);   // dK += dS^T Qs
      rank_update<T, false>(dp + a, KB, n, b - a, kp.k_rows.row(j0 + a), kp.k_rows.stride(),
                            dq_part + (h * n_q + i0) * d_pad, d_pad, d_pad);                 // dQ += dS K
    }
  }
  for (Index j = 0; j < bc; ++j) {
    std::copy_n(dk + j * d_pad, d, in.dk[kv_head].row(j0 + j));
    std::copy_n(dv + j * d_pad, d, in.dv[kv_head].row(j0 + j));
  }
}

// Task t of one KV head's key blocks, ordered 0, n-1, 1, n-2, ...: under a causal (or reverse-causal)
// mask block kb costs about (n - kb) (or kb + 1), so consecutive pairs cost the same and contiguous
// ranges of tasks cost about the same.
inline Index balanced_block(Index t, Index n_blocks) { return t % 2 == 0 ? t / 2 : n_blocks - 1 - t / 2; }

/// Task groups per thread: each group is a fixed, contiguous range of tasks with its own dQ buffer,
/// and groups are handed to threads dynamically, so a thread slowed by another process on the
/// machine hands its share over while the sums stay fixed (the groups depend on the thread count
/// only). Two per thread: finer groups cost one more [Tq, H * d] buffer each.
inline constexpr Index kGroupsPerThread = 2;

}  // namespace attention_detail

/// Gradients of attention() with respect to q, k and v, given the forward's output and lse and
/// dL/dout, without any Tq x Tk buffer (memory O(rows x block) per thread, copies of the inputs,
/// and one [Tq, H * d] partial dQ per task group, see below): D_i = rowsum(dO_i * O_i); per
/// (query block, key block) tile the kernel recomputes S = scale Q K^T, P = exp(S - lse) (masked
/// entries 0), then dV += P^T dO, dP = dO V^T, dS = P (dP - D), dQ += scale dS K,
/// dK += scale dS^T Q. FLOPs: the five products
/// over the visible pairs, 5 * 2 * visible_pairs * head_dim per query head (2.5x the forward's two).
///
/// Parallel over (KV head, key block) tasks, so dK and dV have one writer each, in fixed groups of
/// tasks (kGroupsPerThread per thread) that each add their dQ share into their own buffer, summed
/// in group order at the end: the result is deterministic for a given thread count whichever thread
/// runs a group. (A second pass over query blocks for dQ would recompute S and dP: 7 products
/// instead of 5.)
template <class T>
void attention_backward(const AttentionBackwardInput<T>& in) {
  using namespace attention_detail;
  AttentionInput<T> fwd;  // the forward's view of the same problem: shared validation and masks
  fwd.q = in.q;
  fwd.k = in.k;
  fwd.v = in.v;
  fwd.out = in.dq;
  fwd.n_heads = in.n_heads;
  fwd.head_dim = in.head_dim;
  fwd.scale = in.scale;
  fwd.mask = in.mask;
  fwd.offset = in.offset;
  fwd.custom_mask = in.custom_mask;
  fwd.window = in.window;
  validate_backward(in, fwd);
  const Index n_q = in.q.rows(), n_kv = Index(in.k.size()), H = in.n_heads, d = in.head_dim;
  const Index d_pad = padded_cols<T>(d);
  const Plan<T> plan{fwd, n_kv, H / n_kv, d, d_pad, n_q, in.scale != T(0) ? in.scale : T(1) / std::sqrt(T(d))};
  if (n_q == 0) {
    for (Index h = 0; h < n_kv; ++h)
      for (Index j = 0; j < in.k[h].rows(); ++j) {
        std::fill_n(in.dk[h].row(j), d, T(0));
        std::fill_n(in.dv[h].row(j), d, T(0));
      }
    return;
  }

  QueryRows<T> qr{Tensor<T>({H * n_q, d_pad}), Tensor<T>({H * n_q, d_pad}), Tensor<T>({H, n_q}), Tensor<T>({H, n_q})};
  parallel_for(0, H, [&](Index h) {
    for (Index i = 0; i < n_q; ++i) {
      const T* q = in.q.row(i) + h * d;
      const T* dout = in.dout.row(i) + h * d;
      T* qs = qr.qs.row(h * n_q + i);
      for (Index c = 0; c < d; ++c) qs[c] = q[c] * plan.scale;
      std::copy_n(dout, d, qr.dout.row(h * n_q + i));
      qr.delta(h, i) = simd::dot(dout, in.out.row(i) + h * d, d);
      qr.lse(h, i) = in.lse(i, h);
    }
  });
  std::vector<KeyPanels<T>> kps(static_cast<std::size_t>(n_kv));
  parallel_for(0, n_kv, [&](Index h) {
    KeyPanels<T>& kp = kps[std::size_t(h)];
    kp.k_panels = key_panels(in.k[h]);
    kp.v_panels = key_panels(in.v[h]);
    kp.k_rows = readable_padded(in.k[h], d_pad, kp.k_copy);
  });

  // Tasks: (KV head, key block), each head's blocks in balanced order.
  constexpr Index KB = kKeyBlock<T>;
  std::vector<Index> task_head, task_block;
  for (Index h = 0; h < n_kv; ++h) {
    const Index n_blocks = (in.k[h].rows() + KB - 1) / KB;
    for (Index t = 0; t < n_blocks; ++t) task_head.push_back(h), task_block.push_back(balanced_block(t, n_blocks));
  }
  const Index n_tasks = Index(task_head.size());
  const bool par = ::engram::ENGRAM_ARCH_NAMESPACE::detail::go_parallel(n_tasks);
  const Index n_groups = par ? std::min<Index>(n_tasks, Index(num_threads()) * kGroupsPerThread) : 1;
  const Index part_size = H * n_q * d_pad;
  T* parts = thread_scratch<BackwardTag, 4, T>(std::max<Index>(n_groups, 1) * part_size);  // the caller's, shared by the team
  parallel_for_dynamic(0, n_groups, [&](Index g) {
    T* part = parts + g * part_size;
    std::fill(part, part + part_size, T(0));
    for (Index t = g * n_tasks / n_groups; t < (g + 1) * n_tasks / n_groups; ++t)
      backward_task(plan, in, qr, kps[std::size_t(task_head[std::size_t(t)])], task_head[std::size_t(t)],
                    task_block[std::size_t(t)], part);
  });

  // dQ = scale * sum of the group buffers, in group order.
  parallel_for(0, n_q, [&](Index i) {
    for (Index h = 0; h < H; ++h) {
      T* dst = in.dq.row(i) + h * d;
      std::fill_n(dst, d, T(0));
      for (Index g = 0; g < n_groups; ++g) simd::add(dst, parts + g * part_size + (h * n_q + i) * d_pad, dst, d);
      simd::scale(plan.scale, dst, d);
    }
  });
}

ENGRAM_NAMESPACE_END
