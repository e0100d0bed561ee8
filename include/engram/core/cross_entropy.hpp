// Softmax cross-entropy: the fused LM head (hidden * W^T in chunks of rows, so [N, vocab] logits
// never exist at once) with its gradients, log-probabilities of labels, and the small-classifier
// form on given logits. Rows labelled < 0 are ignored (loss on chosen positions only).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "engram/core/gemm.hpp"
#include "engram/core/parallel.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"
#include "engram/core/workspace.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Sum over counted rows of -log p(label) (natural log), and how many rows counted.
struct CrossEntropyStats {
  double loss_sum = 0;
  Index count = 0;
};

namespace cross_entropy_detail {

struct ScratchTag {};

/// Bytes of logits per chunk when chunk_rows = 0: half of a 2 MiB L2, the other half left to the
/// GEMM's packed panels.
inline constexpr Index kChunkBytes = Index(1) << 20;
/// Fewest rows per chunk: each chunk's three GEMMs stream all of W [V, d], so for a large vocabulary
/// short chunks are bound by that, not by the FLOPs (bench_train, V = 32768, d = 256, one thread:
/// 64 rows 71 GFLOP/s, 128 rows 81, 256 rows and more 93). A 32k vocabulary then gets 32 MB chunks.
inline constexpr Index kMinChunkRows = 256;

template <class T>
Index chunk_rows_for(Index vocab, Index requested) {
  if (requested > 0) return requested;
  return std::max<Index>(kMinChunkRows, kChunkBytes / (padded_cols<T>(vocab) * Index(sizeof(T))));
}

inline void check_labels(std::span<const std::int32_t> labels, Index rows, Index classes, const char* where) {
  check(Index(labels.size()) == rows, where, "expected ", rows, " labels (one per row), got ", labels.size());
  for (std::size_t i = 0; i < labels.size(); ++i)
    check(labels[i] < classes, where, "label ", labels[i], " of row ", i, " is out of range: expected < ", classes,
          " (or < 0 to ignore the row)");
}

// max of x[0, n) and whether every entry is finite (x * 0 is NaN exactly for inf and NaN, and the
// sum of those products stays NaN: one FMA per register on top of the max).
template <class T>
T max_and_finite(const T* x, Index n, bool& finite) {
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  B mx(-std::numeric_limits<T>::infinity()), probe(T(0));
  Index i = 0;
  for (; i + W <= n; i += W) {
    const B v = simd::load(x + i);
    mx = xsimd::max(mx, v);
    probe = xsimd::fma(v, B(T(0)), probe);
  }
  T m = simd::reduce_max(mx), p = simd::reduce_add(probe);
  for (; i < n; ++i) m = std::max(m, x[i]), p += x[i] * T(0);
  finite = p == T(0);
  return m;
}

// e[i] = exp(x[i] - m) (e may alias x) and their sum in double: float partial sums over blocks of at
// most 16 adds per lane, each block added in double, so a 50k-entry row loses nothing to the sum.
template <class T>
double exp_sum(const T* x, T* e, Index n, T m) {
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>, kBlock = 16 * W;
  const B mb(m);
  double total = 0;
  Index i = 0;
  while (i + W <= n) {
    B acc(T(0));
    const Index end = std::min(n - (n - i) % W, i + kBlock);
    for (; i < end; i += W) {
      const B v = simd::exp(simd::load(x + i) - mb);
      simd::store(e + i, v);
      acc += v;
    }
    total += double(simd::reduce_add(acc));
  }
  for (; i < n; ++i) {
    e[i] = std::exp(x[i] - m);
    total += double(e[i]);
  }
  return total;
}

// One row of logits x [n] with label y >= 0: returns -log p(y). With `grad` (may alias x), writes
// grad_scale * (softmax(x) - onehot(y)). A non-finite logit makes the loss (and the gradient) NaN.
template <class T>
double row_loss(const T* x, Index n, std::int32_t y, T grad_scale, T* grad) {
  bool finite = true;
  const T m = max_and_finite(x, n, finite);
  const double target = double(x[y]);
  if (!finite) {
    if (grad) std::fill(grad, grad + n, std::numeric_limits<T>::quiet_NaN());
    return std::numeric_limits<double>::quiet_NaN();
  }
  double s;
  if (grad) {
    s = exp_sum(x, grad, n, m);
    simd::scale(T(double(grad_scale) / s), grad, n);
    grad[y] -= grad_scale;
  } else {
    T* tmp = thread_scratch<ScratchTag, 2, T>(n);
    s = exp_sum(x, tmp, n, m);
  }
  return double(m) + std::log(s) - target;
}

}  // namespace cross_entropy_detail

/// Small classifier heads: logits [N, C] given, labels [N] (< 0: ignored). Returns the sum of
/// -log p(label) over counted rows and their count; dlogits (if non-empty, [N, C], may alias logits)
/// = grad_scale * dLoss_sum/dlogits = grad_scale * (softmax - onehot), 0 on ignored rows. A
/// non-finite logit in a counted row makes the loss NaN.
template <class T>
CrossEntropyStats softmax_cross_entropy(ConstView<T> logits, std::span<const std::int32_t> labels, T grad_scale,
                                        View<T> dlogits) {
  constexpr const char* where = "softmax_cross_entropy";
  using namespace cross_entropy_detail;
  const Index N = logits.rows(), C = logits.cols();
  check_labels(labels, N, C, where);
  const bool grad = !dlogits.empty();
  if (grad) check_shape(dlogits, N, C, where, "dlogits");
  std::vector<double> losses(static_cast<std::size_t>(N), 0.0);
  parallel_for(0, N, [&](Index r) {
    const std::int32_t y = labels[std::size_t(r)];
    if (y < 0) {
      if (grad) std::fill_n(dlogits.row(r), C, T(0));
      return;
    }
    losses[std::size_t(r)] = row_loss(logits.row(r), C, y, grad_scale, grad ? dlogits.row(r) : nullptr);
  });
  CrossEntropyStats stats;
  for (Index r = 0; r < N; ++r)
    if (labels[std::size_t(r)] >= 0) stats.loss_sum += losses[std::size_t(r)], ++stats.count;
  return stats;
}

namespace cross_entropy_detail {

// Drives both LM-head entry points: the counted rows in chunks of at most `chunk` rows; per chunk
// the logits [n, V] = hidden rows * W^T, then `per_row(chunk_row, logits_row, label)`, then
// `after(rows of the chunk, logits)` (the gradient products). Ignored rows never enter a chunk.
template <class T, class PerRow, class After>
void lm_chunks(ConstView<T> hidden, ConstView<T> W, std::span<const std::int32_t> labels, Index chunk, PerRow&& per_row,
               After&& after) {
  const Index V = W.rows(), d = hidden.cols(), v_pad = padded_cols<T>(V), d_pad = padded_cols<T>(d);
  std::vector<Index> rows;
  for (Index r = 0; r < hidden.rows(); ++r)
    if (labels[std::size_t(r)] >= 0) rows.push_back(r);
  T* logits_buf = thread_scratch<ScratchTag, 0, T>(std::min<Index>(chunk, Index(rows.size())) * v_pad);
  T* gather_buf = thread_scratch<ScratchTag, 1, T>(std::min<Index>(chunk, Index(rows.size())) * d_pad);
  for (Index c0 = 0; c0 < Index(rows.size()); c0 += chunk) {
    const Index n = std::min<Index>(chunk, Index(rows.size()) - c0);
    const Index* idx = rows.data() + c0;
    // Consecutive rows are read in place; otherwise (ignored rows in between) gathered.
    const bool contiguous = idx[n - 1] - idx[0] == n - 1;
    ConstView<T> h;
    if (contiguous) {
      h = hidden.middle_rows(idx[0], n);
    } else {
      View<T> g(gather_buf, n, d, d_pad);
      for (Index r = 0; r < n; ++r) std::copy_n(hidden.row(idx[r]), d, g.row(r));
      h = g;
    }
    View<T> logits(logits_buf, n, V, v_pad);
    gemm<T>(h, Trans::no, W, Trans::yes, logits);
    parallel_for(0, n, [&](Index r) { per_row(c0 + r, logits.row(r), labels[std::size_t(idx[r])]); });
    after(std::span<const Index>(idx, std::size_t(n)), contiguous, h, ConstView<T>(logits));
  }
}

template <class T>
void check_head(ConstView<T> hidden, ConstView<T> W, std::span<const std::int32_t> labels, const char* where) {
  check(W.rows() > 0, where, "the head W must have at least one row (the vocabulary), got [", W.rows(), ", ", W.cols(), "]");
  check_shape(W, -1, hidden.cols(), where, "W (the head, [vocab, d] with d = hidden.cols())");
  check_labels(labels, hidden.rows(), W.rows(), where);
}

}  // namespace cross_entropy_detail

/// Fused LM head + cross-entropy: logits = hidden [N, d] * W^T (W [V, d], a PyTorch-layout head,
/// e.g. the tied embedding), processed in chunks of rows so [N, V] is never held (chunk_rows = 0
/// chooses a size that keeps a chunk of logits in L2, at least 256 rows; rows labelled < 0 are
/// ignored and never computed). Labels must otherwise be < V (Error naming the row). With dhidden
/// non-empty, dhidden [N, d] = grad_scale * dLoss_sum/dhidden (overwritten; 0 on ignored rows); dW
/// [V, d] += grad_scale * dLoss_sum/dW when dW is non-empty. The log-sum-exp of each row is summed
/// and logged in double; a non-finite logit makes the returned loss NaN.
template <class T>
CrossEntropyStats lm_cross_entropy(ConstView<T> hidden, ConstView<T> W, std::span<const std::int32_t> labels,
                                   T grad_scale, View<T> dhidden, View<T> dW, Index chunk_rows = 0) {
  constexpr const char* where = "lm_cross_entropy";
  using namespace cross_entropy_detail;
  check_head(hidden, W, labels, where);
  check(chunk_rows >= 0, where, "chunk_rows must be >= 0 (0: automatic), got ", chunk_rows);
  const Index N = hidden.rows(), d = hidden.cols(), V = W.rows();
  const bool want_dh = !dhidden.empty(), want_dw = !dW.empty();
  if (want_dh) check_shape(dhidden, N, d, where, "dhidden");
  if (want_dw) check_shape(dW, V, d, where, "dW");
  const bool grad = want_dh || want_dw;
  if (want_dh)
    for (Index r = 0; r < N; ++r) std::fill_n(dhidden.row(r), d, T(0));
  const Index chunk = chunk_rows_for<T>(V, chunk_rows);
  std::vector<double> losses(labels.size(), 0.0);
  CrossEntropyStats stats;
  T* dh_buf = want_dh ? thread_scratch<ScratchTag, 3, T>(std::min(chunk, std::max<Index>(N, 1)) * padded_cols<T>(d)) : nullptr;
  lm_chunks<T>(
      hidden, W, labels, chunk,
      [&](Index k, T* logits, std::int32_t y) {
        losses[std::size_t(k)] = row_loss(logits, V, y, grad_scale, grad ? logits : nullptr);
      },
      [&](std::span<const Index> idx, bool contiguous, ConstView<T> h, ConstView<T> dlogits) {
        const Index n = Index(idx.size());
        for (Index r = 0; r < n; ++r) stats.loss_sum += losses[std::size_t(stats.count + r)];
        stats.count += n;
        if (want_dh) {
          if (contiguous) {
            gemm<T>(dlogits, Trans::no, W, Trans::no, dhidden.middle_rows(idx[0], n));
          } else {
            View<T> dh(dh_buf, n, d, padded_cols<T>(d));
            gemm<T>(dlogits, Trans::no, W, Trans::no, dh);
            for (Index r = 0; r < n; ++r) std::copy_n(dh.row(r), d, dhidden.row(idx[r]));
          }
        }
        if (want_dw) gemm<T>(dlogits, Trans::yes, h, Trans::no, dW, T(1), T(1));
      });
  return stats;
}

/// Forward only: out[i] = log p(labels[i] | row i) (natural log) of the LM head, 0 for ignored
/// rows; chunked like lm_cross_entropy. A non-finite logit in a row gives NaN there.
template <class T>
void lm_log_probs(ConstView<T> hidden, ConstView<T> W, std::span<const std::int32_t> labels, std::span<double> out,
                  Index chunk_rows = 0) {
  constexpr const char* where = "lm_log_probs";
  using namespace cross_entropy_detail;
  check_head(hidden, W, labels, where);
  check(chunk_rows >= 0, where, "chunk_rows must be >= 0 (0: automatic), got ", chunk_rows);
  check(out.size() == labels.size(), where, "expected ", labels.size(), " outputs (one per row), got ", out.size());
  std::fill(out.begin(), out.end(), 0.0);
  std::vector<Index> row_of;
  for (Index r = 0; r < hidden.rows(); ++r)
    if (labels[std::size_t(r)] >= 0) row_of.push_back(r);
  lm_chunks<T>(
      hidden, W, labels, chunk_rows_for<T>(W.rows(), chunk_rows),
      [&](Index k, T* logits, std::int32_t y) {
        out[std::size_t(row_of[std::size_t(k)])] = -row_loss<T>(logits, W.rows(), y, T(0), nullptr);
      },
      [](std::span<const Index>, bool, ConstView<T>, ConstView<T>) {});
}

ENGRAM_NAMESPACE_END
