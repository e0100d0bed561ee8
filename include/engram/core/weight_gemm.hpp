// Products with a weight matrix in any format (core/weights.hpp): y [m, n] = alpha * x [m, k] W^T
// + beta * y for W [n, k], fp32 accumulation. A few rows (decode, batched decode) go through a fused
// decode-and-dot kernel that streams W once, split across threads by rows of W; many rows (prefill)
// dequantise W into the packed panels of the sgemm micro-kernel (core/gemm_kernel.hpp).
#pragma once

#include "engram/core/activation_quant.hpp"
#include "engram/core/gemm_kernel.hpp"
#include "engram/core/weights.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace weight_gemm {

using Batch = simd::batch<float>;
inline constexpr int kS = decode::kVectors;  // registers per decode step (32 weights with AVX-512, 16 with AVX2)

// The row kernel's tile: kXRows rows of x against kWRows rows of W, one accumulator register per
// pair. Per decode step (2 registers of weights) it holds kXRows * 2 x registers, 2 decoded W
// registers (one row at a time) and kXRows * kWRows accumulators: 4 x 4 with AVX-512 = 16 + 8 + 2
// of 32 registers; 2 x 4 with AVX2 = 8 + 4 + 2 of 16. Each W register feeds kXRows FMAs, so the decode (the cost of a compressed
// format) is shared by the rows of a batch, and 16 resp. 8 independent chains cover the FMA latency.
inline constexpr int kXRows = simd::kVectorRegisters >= 32 ? 4 : 2;
inline constexpr int kWRows = 4;
/// Up to this many rows of x take the row kernel; more take the packed GEMM (measured: at 16 rows
/// [16, 768] x [2048, 768]^T runs at about the packed kernel's rate, beyond it the packed kernel wins).
inline constexpr Index kMaxRows = 16;
/// Matrices of fewer bytes than this stay on one thread: streaming 256 KB takes ~20 us at one core's
/// bandwidth, against a few microseconds to wake a second thread (so tiny models keep one thread).
inline constexpr double kParallelBytes = 256 * 1024;

/// How many tiles of W rows ahead tile() prefetches into L2.
inline constexpr Index kFarTiles = 8;

struct ScratchTag {};

// y[i][j + r] for i < XR, r < WR over the whole decode steps [0, ks) of x (rows xs[i], padded with
// zeros to whole blocks) and W in f32/bf16/f16; the tail [ks, k) of the (unpadded) row goes scalar.
// Every output element is the same sequence of operations whatever XR, WR, the thread or the batch
// size, so results do not depend on how rows are grouped.
template <WeightFormat F, int XR, int WR>
inline void tile(const float* const* xs, const WeightView& w, Index j, Index k, float* const* ys, float alpha, float beta) {
  static_assert(F != WeightFormat::q8 && F != WeightFormat::q4, "q8/q4 rows take tile_int8");
  constexpr Index W = simd::width<float>;
  constexpr Index step = decode::kStep;
  const Index ks = k / step * step;
  const unsigned char* rows[WR];
  for (int r = 0; r < WR; ++r) rows[r] = w.row(j + r);
  // The rows two tiles ahead, prefetched at the bytes this step reads: a compressed row is short
  // (816 bytes for 768 q8 weights), so the hardware prefetcher, which follows each row's stream,
  // runs out of row before it gets ahead. Measured on a one-row product with [160000, 768] from
  // DRAM: bf16 5.1 -> 7.8 GB/s, q8 4.8 -> 7.7 GB/s (f32 9.0 on the same loaded machine); one tile
  // ahead gave q8 6.7.
  const unsigned char* next[WR];
  for (int r = 0; r < WR; ++r) next[r] = j + 2 * WR + r < w.rows ? w.row(j + 2 * WR + r) : rows[r];
  // And into L2 eight tiles ahead (32 rows: 96 KB of f32): one core keeps only about 16 L1 misses
  // in flight (its line fill buffers), too few for a DRAM stream at 100 ns of latency once a tile's
  // arithmetic grows (batched decode: 2 groups of 4 rows of x per tile of W); L2 prefetches queue
  // beyond them. Measured on a Xeon: batch-8 f32 decode 124-135 -> 141-146 tok/s, one-row bf16
  // 56-58 -> 64-65, f32 unchanged.
  const unsigned char* far[WR];
  for (int r = 0; r < WR; ++r) far[r] = j + kFarTiles * WR + r < w.rows ? w.row(j + kFarTiles * WR + r) : rows[r];
  Batch acc[XR][WR];
#pragma GCC unroll 8
  for (int i = 0; i < XR; ++i)
#pragma GCC unroll 8
    for (int r = 0; r < WR; ++r) acc[i][r] = Batch(0.0f);
  for (Index c = 0; c < ks; c += step) {
#pragma GCC unroll 8
    for (int r = 0; r < WR; ++r) _mm_prefetch(reinterpret_cast<const char*>(next[r] + format_row_bytes(F, c)), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int r = 0; r < WR; ++r) _mm_prefetch(reinterpret_cast<const char*>(far[r] + format_row_bytes(F, c)), _MM_HINT_T1);
    Batch xv[XR][kS];
#pragma GCC unroll 8
    for (int i = 0; i < XR; ++i)
#pragma GCC unroll 4
      for (int h = 0; h < kS; ++h) xv[i][h] = Batch::load_unaligned(xs[i] + c + h * W);
#pragma GCC unroll 8
    for (int r = 0; r < WR; ++r) {
      Batch wv[kS];
      decode::decode_raw<F>(rows[r], c, wv);
#pragma GCC unroll 8
      for (int i = 0; i < XR; ++i)
#pragma GCC unroll 4
        for (int h = 0; h < kS; ++h) acc[i][r] = simd::fmadd(wv[h], xv[i][h], acc[i][r]);
    }
  }
  for (int i = 0; i < XR; ++i)
    for (int r = 0; r < WR; ++r) {
      float s = simd::reduce_add(acc[i][r]);
      for (Index c = ks; c < k; ++c) s += xs[i][c] * decode_weight(F, rows[r], c);
      float& out = ys[i][j + r];
      out = beta == 0.0f ? alpha * s : alpha * s + beta * out;
    }
}

// The same tile for q8/q4 weights against activation rows quantised to int8 (core/activation_quant.hpp):
// exact integer dot products per block, scaled by both block scales, so no weight becomes a float.
template <WeightFormat F, int XR, int WR>
inline void tile_int8(const act_quant::Row* xs, const WeightView& w, Index j, Index k, float* const* ys, float alpha, float beta) {
  const unsigned char* rows[WR];
  const unsigned char* next[WR];
  for (int r = 0; r < WR; ++r) {
    rows[r] = w.row(j + r);
    next[r] = j + 2 * WR + r < w.rows ? w.row(j + 2 * WR + r) : rows[r];  // two tiles ahead, as tile() does
    // (No L2 prefetch further ahead as in tile(): whole q8/q4 rows eight tiles ahead made batched
    // and one-row q8 decode 5-10% slower on a Xeon.)
  }
  act_quant::Acc acc[XR][WR];
  for (int i = 0; i < XR; ++i)
    for (int r = 0; r < WR; ++r) acc[i][r] = act_quant::zero();
  act_quant::dot<F, XR, WR>(xs, rows, next, (k + kQuantBlock - 1) / kQuantBlock, acc);
  for (int i = 0; i < XR; ++i)
    for (int r = 0; r < WR; ++r) {
      const float s = act_quant::reduce(acc[i][r]);
      float& out = ys[i][j + r];
      out = beta == 0.0f ? alpha * s : alpha * s + beta * out;
    }
}

// Rows [j0, j1) of W against rows xs[0..m) (m <= kMaxRows): for each group of kWRows W-rows, every
// group of kXRows x-rows, so the W rows are read from memory once and re-read from L1 by the rest of
// the batch.
template <WeightFormat F, class X>
inline void rows_range(const X* xs, Index m, const WeightView& w, Index j0, Index j1, Index k, float* const* ys, float alpha, float beta) {
  const auto run = [&]<int XR, int WR>(Index i0, Index j) {
    if constexpr (std::is_same_v<X, act_quant::Row>) tile_int8<F, XR, WR>(xs + i0, w, j, k, ys + i0, alpha, beta);
    else tile<F, XR, WR>(xs + i0, w, j, k, ys + i0, alpha, beta);
  };
  const auto group = [&]<int WR>(Index j) {
    for (Index i0 = 0; i0 < m; i0 += kXRows) {
      const Index xr = std::min<Index>(kXRows, m - i0);
      if constexpr (kXRows == 4) {
        if (xr == 4) run.template operator()<4, WR>(i0, j);
        else if (xr == 3) run.template operator()<3, WR>(i0, j);
        else if (xr == 2) run.template operator()<2, WR>(i0, j);
        else run.template operator()<1, WR>(i0, j);
      } else {
        if (xr == 2) run.template operator()<2, WR>(i0, j);
        else run.template operator()<1, WR>(i0, j);
      }
    }
  };
  Index j = j0;
  for (; j + kWRows <= j1; j += kWRows) group.template operator()<kWRows>(j);
  for (; j < j1; ++j) group.template operator()<1>(j);
}

/// y [m, n] = alpha * x [m, k] W^T + beta * y for m <= kMaxRows, streaming W once; split across
/// threads by rows of W when W holds at least kParallelBytes. Shapes checked by the caller.
inline void few_rows(ConstView<float> x, const WeightView& w, View<float> y, float alpha, float beta) {
  const Index m = x.rows(), k = w.cols, n = w.rows;
  float* ys[kMaxRows];
  for (Index i = 0; i < m; ++i) ys[i] = y.row(i);
  const int threads = w.bytes() >= kParallelBytes && detail::go_parallel(2) ? num_threads() : 1;
  const Index units = (n + kWRows - 1) / kWRows;
  const Index parts = std::min<Index>(threads, units);
  const auto split = [&]<WeightFormat F, class X>(const X* xs) {
    parallel_for(0, parts, [&](Index t) {
      const Index lo = std::min(n, units * t / parts * kWRows), hi = std::min(n, units * (t + 1) / parts * kWRows);
      rows_range<F>(xs, m, w, lo, hi, k, ys, alpha, beta);
    }, parts > 1);
  };
  decode::dispatch(w.format, [&]<WeightFormat F>() {
    if constexpr (F == WeightFormat::q8 || F == WeightFormat::q4) {
      // x rows quantised once per product, shared by every thread.
      const Index blocks = act_quant::padded_blocks(k);
      std::int8_t* q = thread_scratch<ScratchTag, 2, std::int8_t>(m * blocks * kQuantBlock);
      float* d = thread_scratch<ScratchTag, 3, float>(m * blocks * act_quant::kLanes);
      std::int32_t* bias = thread_scratch<ScratchTag, 4, std::int32_t>(m * blocks * act_quant::kLanes);
      act_quant::Row xs[kMaxRows];
      for (Index i = 0; i < m; ++i) {
        std::int8_t* qi = q + i * blocks * kQuantBlock;
        float* di = d + i * blocks * act_quant::kLanes;
        std::int32_t* bi = bias + i * blocks * act_quant::kLanes;
        act_quant::quantise(x.row(i), k, act_quant::offset<F>(), qi, di, bi);
        xs[i] = {qi, di, bi};
      }
      split.template operator()<F>(xs);
    } else {
      // x rows copied with zeros up to whole blocks: the kernels read full 16-steps, and a view's
      // padding may hold anything (NaN).
      const Index kp = (k + kQuantBlock - 1) / kQuantBlock * kQuantBlock;
      float* xbuf = thread_scratch<ScratchTag, 0, float>(m * kp);
      const float* xs[kMaxRows];
      for (Index i = 0; i < m; ++i) {
        float* dst = xbuf + i * kp;
        std::copy_n(x.row(i), k, dst);
        std::fill(dst + k, dst + kp, 0.0f);
        xs[i] = dst;
      }
      split.template operator()<F>(xs);
    }
  });
}

/// The same product for many rows: W dequantised into the packed B panels of the sgemm kernel
/// (once per block of rows of x), then the register-tiled micro-kernel. For q8/q4 weights x is
/// first replaced by its int8 round trip, so prefill computes the W x Q8(x) that decode does.
inline void many_rows(ConstView<float> x_in, const WeightView& w, View<float> y, float alpha, float beta) {
  const Index m = x_in.rows(), n = w.rows, k = w.cols;
  ConstView<float> x = x_in;
  if (w.format == WeightFormat::q8 || w.format == WeightFormat::q4) {
    float* buf = thread_scratch<ScratchTag, 5, float>(m * k);
    View<float> xq(buf, m, k, k);
    for (Index i = 0; i < m; ++i) {
      std::copy_n(x_in.row(i), k, xq.row(i));
      act_quant::round_trip(xq.row(i), k);
    }
    x = xq;
  }
  decode::dispatch(w.format, [&]<WeightFormat F>() {
    sgemm::run(
        m, n, k, [&](Index i0, Index mc, Index p0, Index kc, float* out) { sgemm::pack_a(x, false, i0, mc, p0, kc, out); },
        [&](Index j0, Index nc, Index p0, Index kc, float* out) {
          float* tmp = thread_scratch<ScratchTag, 1, float>(sgemm::kNr * sgemm::kKc);
          const float* src[sgemm::kNr];
          for (Index jr = 0; jr < nc; jr += sgemm::kNr, out += kc * sgemm::kNr) {
            const Index cols = std::min<Index>(sgemm::kNr, nc - jr);
            for (Index j = 0; j < cols; ++j) {
              decode::decode_range<F>(w.row(j0 + jr + j), p0, kc, tmp + j * kc);
              src[j] = tmp + j * kc;
            }
            sgemm::pack_transposed(src, cols, sgemm::kNr, kc, out);
          }
        },
        y, alpha, beta);
  });
}

}  // namespace weight_gemm

/// y [m, n] = alpha * x [m, k] W^T + beta * y with W [n, k] in any weight format (beta == 0 ignores
/// y's contents). Shapes are checked; y must not alias x.
inline void matmul_nt(ConstView<float> x, const WeightView& w, View<float> y, float alpha = 1.0f, float beta = 0.0f) {
  check(x.cols() == w.cols, "matmul_nt", "x is [", x.rows(), ", ", x.cols(), "] but the weight is [", w.rows, ", ", w.cols, "]");
  check(y.rows() == x.rows() && y.cols() == w.rows, "matmul_nt", "y expected shape [", x.rows(), ", ", w.rows, "], got [", y.rows(), ", ",
        y.cols(), "]");
  check(!detail::views_overlap<float>(x, y), "matmul_nt", "y shares memory with x: the product needs a separate output");
  if (y.empty()) return;
  if (w.cols == 0) {
    for (Index r = 0; r < y.rows(); ++r)
      for (Index c = 0; c < y.cols(); ++c) y(r, c) = beta == 0.0f ? 0.0f : beta * y(r, c);
    return;
  }
  if (x.rows() <= weight_gemm::kMaxRows) weight_gemm::few_rows(x, w, y, alpha, beta);
  else weight_gemm::many_rows(x, w, y, alpha, beta);
}

ENGRAM_NAMESPACE_END
