// sgemm: engram's own packed, register-tiled single-precision GEMM (the BLIS / tinyBLAS pattern)
// on xsimd, C [m, n] = alpha * op(A) [m, k] * op(B) [k, n] + beta * C. gemm() (core/gemm.hpp)
// routes float products here; op(B) comes from any panel packer, so compressed weights
// (core/weights.hpp) run through the same micro-kernel after dequantising into its panels.
#pragma once

#include <algorithm>
#include <cstring>

#include "engram/core/parallel.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"
#include "engram/core/workspace.hpp"

ENGRAM_NAMESPACE_BEGIN

namespace detail {
/// Whether two views share an element. Exact when they have the same row stride (column blocks of
/// one tensor side by side do not overlap); otherwise whether their address ranges meet.
template <class T>
bool views_overlap(ConstView<T> a, ConstView<T> b) {
  if (a.empty() || b.empty()) return false;
  const T* a_end = a.data() + (a.rows() - 1) * a.stride() + a.cols();
  const T* b_end = b.data() + (b.rows() - 1) * b.stride() + b.cols();
  if (a_end <= b.data() || b_end <= a.data()) return false;
  if (a.stride() != b.stride() || a.stride() == 0) return true;
  const Index s = a.stride();
  Index d = b.data() - a.data();  // b = a + d: row q = floor(d / s), column offset rem
  const Index q = d >= 0 ? d / s : -((-d + s - 1) / s);
  const Index rem = d - q * s;
  // b's columns [rem, rem + b.cols) of rows q .. q + b.rows - 1 (the part past s wraps to the next row).
  const auto meets = [&](Index row0, Index col0, Index col1) {
    const bool rows = row0 < a.rows() && row0 + b.rows() > 0;
    const bool cols = col0 < a.cols() && col1 > 0;
    return rows && cols && col1 > col0;
  };
  return meets(q, rem, std::min(rem + b.cols(), s)) || (rem + b.cols() > s && meets(q + 1, 0, rem + b.cols() - s));
}
}  // namespace detail

namespace sgemm {

using Batch = simd::batch<float>;
inline constexpr Index kW = simd::width<float>;

// ---- The register tile -------------------------------------------------------------------------
// The micro-kernel keeps a C tile of kMr rows x kNv vectors (kNr columns) in registers. Per step p
// of the inner dimension it loads kNv vectors of packed B (row p of a B micro-panel) and broadcasts
// kMr values of packed A (column p of an A micro-panel): kMr * kNv FMAs. Live registers: kMr * kNv
// accumulators + kNv B vectors + 1 broadcast, which must fit the register file (the old FMA probe's
// 16 chains + 2 constants spilled on AVX2's 16): kMr = (R - kNv - 1) / kNv.
//   AVX-512 (32 registers): kNv = 2 -> kMr = 14, a 14 x 32 tile, 28 accumulators.
//   AVX2    (16 registers): kNv = 2 -> kMr = 6,  a 6 x 16 tile (the classic Haswell tile), 12.
// Latency: an FMA result is ready 4 cycles after issue and two FMA ports issue per cycle, so at
// least 8 independent accumulators keep both busy; 28 and 12 leave slack for load delays. Loads:
// kNv + kMr per step (16 and 8) against kMr * kNv FMAs (28 and 12), within the two loads per cycle
// the cores sustain beside two FMAs. kNv = 3 (9 x 48 with AVX-512) has fewer loads per FMA but
// wastes more of the edge tiles on the usual widths (768, 2048 are not multiples of 48).
inline constexpr int kNv = 2;
inline constexpr int kMr = (simd::kVectorRegisters - kNv - 1) / kNv;
inline constexpr Index kNr = kNv * kW;
static_assert(kMr * kNv >= 8, "fewer than 8 accumulators cannot hide the FMA latency on two ports");

// ---- Cache blocks ------------------------------------------------------------------------------
// kKc: depth of the packed panels. The A micro-panel [kKc, kMr] (14 KB with AVX-512, 6 KB with
// AVX2) stays in L1 (32-48 KB) while the kernel sweeps every B micro-panel [kKc, kNr] of the block
// from L2; each C tile is loaded and stored once per kKc steps (256 FMAs per C element). Measured
// on the 2048^3 product: 192-384 and kNc 256-1024 within noise of each other; 14 x 32, 9 x 48 and
// 6 x 64 tiles too.
inline constexpr Index kKc = 256;
// kNc: columns of the packed B block [kKc, kNc] = 256 KB, which stays in L2 while every A
// micro-panel of the rows passes over it: half of a 512 KB L2 (Zen 3), leaving room for the A
// micro-panels and C. Measured on 2048^3 with two threads: Zen 3 137 and 115 ms against 146 and
// 144 ms at kNc = 512 (a 512 KB block is the whole L2 there), 156 ms at 128; on a 2 MB L2 (Zen 5)
// 256-1024 were within noise of each other.
inline constexpr Index kNc = 256;
// kMc: rows of the packed A block [kMc, kKc] (1 MB), packed once per depth block and swept against
// every B block of the columns; B is packed once per kMc rows, so larger is less packing (measured:
// 16 * kMr rows spent 10% of a 2048^3 product packing, 1024 rows 4%), bounded by the scratch.
inline constexpr Index kMc = 1024 / kMr * kMr;

// Scratch owners (core/workspace.hpp): one packed A block and one packed B block per thread.
struct PackTag {};

/// The micro-kernel: c [rows, cols] (row stride ldc) = alpha * sum_p a[p][r] * b[p][j] + beta * c for
/// r < rows <= kMr, j < cols <= kNr, over kc steps of the packed panels a [kc, kMr], b [kc, kNr].
/// beta == 0 never reads c (NaN included).
inline void micro_kernel(Index kc, const float* a, const float* b, float* c, Index ldc, float alpha, float beta, Index rows,
                         Index cols) {
  Batch acc[kMr][kNv];
#pragma GCC unroll 32
  for (int r = 0; r < kMr; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) acc[r][v] = Batch(0.0f);
  for (Index p = 0; p < kc; ++p) {
    Batch bv[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) bv[v] = Batch::load_aligned(b + v * kW);
#pragma GCC unroll 32
    for (int r = 0; r < kMr; ++r) {
      const Batch ar(a[r]);
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) acc[r][v] = simd::fmadd(ar, bv[v], acc[r][v]);
    }
    a += kMr;
    b += kNr;
  }
  const Batch va(alpha), vb(beta);
  if (rows == kMr && cols == kNr) {
#pragma GCC unroll 32
    for (int r = 0; r < kMr; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) {
        float* out = c + r * ldc + v * kW;
        const Batch x = beta == 0.0f ? va * acc[r][v] : simd::fmadd(vb, Batch::load_unaligned(out), va * acc[r][v]);
        x.store_unaligned(out);
      }
    return;
  }
  // An edge tile: through a local tile, then only the valid entries.
  alignas(64) float tile[kMr * kNr];
#pragma GCC unroll 32
  for (int r = 0; r < kMr; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) (va * acc[r][v]).store_aligned(tile + r * kNr + v * kW);
  for (Index r = 0; r < rows; ++r) {
    float* out = c + r * ldc;
    const float* t = tile + r * kNr;
    if (beta == 0.0f)
      for (Index j = 0; j < cols; ++j) out[j] = t[j];
    else
      for (Index j = 0; j < cols; ++j) out[j] = t[j] + beta * out[j];
  }
}

// Transposes 8 rows x kc columns of a row-major source (row q at src[q], columns from 0) into
// out[p * ld + q] for p < kc, q < 8, 8 columns at a time through the 8 x 8 AVX register transpose
// (one load and one store per 8 floats instead of 8 scalar moves). Each row p is stored as 8 floats,
// so when fewer than 8 columns of `out` belong to this group the extra lanes spill into row p + 1,
// which the next (ascending) store rewrites; see pack_transposed for the rest of the contract.
inline void transpose8(const float* const* src, Index kc, float* out, Index ld) {
  Index p = 0;
#if defined(__AVX__)
  for (; p + 8 <= kc; p += 8) {
    const __m256 r0 = _mm256_loadu_ps(src[0] + p), r1 = _mm256_loadu_ps(src[1] + p), r2 = _mm256_loadu_ps(src[2] + p),
                 r3 = _mm256_loadu_ps(src[3] + p), r4 = _mm256_loadu_ps(src[4] + p), r5 = _mm256_loadu_ps(src[5] + p),
                 r6 = _mm256_loadu_ps(src[6] + p), r7 = _mm256_loadu_ps(src[7] + p);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
                 t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44),
                 u3 = _mm256_shuffle_ps(t1, t3, 0xEE), u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    float* o = out + p * ld;
    _mm256_storeu_ps(o + 0 * ld, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(o + 1 * ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(o + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(o + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(o + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(o + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(o + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(o + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
  }
#endif
  for (; p < kc; ++p)
    for (int q = 0; q < 8; ++q) out[p * ld + q] = src[q][p];
}

// Packs `count` source rows (row q at rows[q], columns [0, kc)) transposed into a micro-panel
// out[p * width + q]; rows count..width-1 are zero. Groups of 8 rows go through transpose8, the
// last (short) group first, re-reading its last row for the missing ones: its extra lanes land on
// slots of row p + 1 (or up to 8 floats past the panel) that the following groups, or the next
// panel, overwrite. The edge panels of a matrix (count < width) take the scalar path.
inline void pack_transposed(const float* const* rows, Index count, Index width, Index kc, float* out) {
  if (count < width) {
    for (Index p = 0; p < kc; ++p) {
      for (Index q = 0; q < count; ++q) out[p * width + q] = rows[q][p];
      for (Index q = count; q < width; ++q) out[p * width + q] = 0.0f;
    }
    return;
  }
  const float* group[8];
  for (Index g = (width - 1) / 8 * 8; g >= 0; g -= 8) {
    for (Index q = 0; q < 8; ++q) group[q] = rows[std::min<Index>(g + q, count - 1)];
    transpose8(group, kc, out + g, width);
  }
}

/// Packs `count` rows or columns [i0, i0 + count) x depth [p0, p0 + kc) of an operand into micro-panels
/// [kc, Width] (entries beyond the matrix are zero). `along_k`: the operand's rows run along the inner
/// dimension (A stored [m, k], or B stored [n, k] as a PyTorch weight), so Width rows are gathered
/// and transposed; otherwise its rows are depth steps and each panel row is a contiguous copy.
template <Index Width>
inline void pack_panels(ConstView<float> m, bool along_k, Index i0, Index count, Index p0, Index kc, float* out) {
  for (Index ir = 0; ir < count; ir += Width, out += kc * Width) {
    const Index n = std::min<Index>(Width, count - ir);
    if (along_k) {
      const float* src[Width];
      for (Index r = 0; r < n; ++r) src[r] = m.row(i0 + ir + r) + p0;
      pack_transposed(src, n, Width, kc, out);
    } else {
      for (Index p = 0; p < kc; ++p) {
        float* dst = out + p * Width;
        std::copy_n(m.row(p0 + p) + i0 + ir, n, dst);
        std::fill(dst + n, dst + Width, 0.0f);
      }
    }
  }
}

/// Packs rows [i0, i0 + mc) x depth [p0, p0 + kc) of op(A) into A micro-panels [kc, kMr].
/// `transposed`: A is stored [k, m] (op(A) = A^T).
inline void pack_a(ConstView<float> a, bool transposed, Index i0, Index mc, Index p0, Index kc, float* out) {
  pack_panels<kMr>(a, !transposed, i0, mc, p0, kc, out);
}

/// Packs columns [j0, j0 + nc) x depth [p0, p0 + kc) of op(B) into B micro-panels [kc, kNr].
/// `transposed`: B is stored [n, k] (op(B) = B^T, a PyTorch weight).
inline void pack_b(ConstView<float> b, bool transposed, Index j0, Index nc, Index p0, Index kc, float* out) {
  pack_panels<kNr>(b, transposed, j0, nc, p0, kc, out);
}

/// Rounds n up to a multiple of q.
constexpr Index round_up(Index n, Index q) { return (n + q - 1) / q * q; }

/// The blocked loops over rows [m0, m1) x columns [n0, n1) of C on the calling thread.
/// pack_a(i0, mc, p0, kc, out) and pack_b(j0, nc, p0, kc, out) fill micro-panels as pack_a/pack_b above.
template <class PackA, class PackB>
void blocked(Index m0, Index m1, Index n0, Index n1, Index k, const PackA& pack_a_fn, const PackB& pack_b_fn, View<float> c, float alpha,
             float beta) {
  if (m1 <= m0 || n1 <= n0) return;
  float* bbuf = thread_scratch<PackTag, 0, float>(kKc * round_up(std::min(kNc, n1 - n0), kNr) + 8);  // + 8: pack_transposed's slack
  // Row blocks of equal size (whole micro-panels), so no block is a sliver that repacks all of B
  // for a few rows (2048 rows: 2 blocks of 1036 and 1012, not 1022 + 1022 + 4).
  const Index blocks = (m1 - m0 + kMc - 1) / kMc;
  const Index block_rows = round_up((m1 - m0 + blocks - 1) / blocks, kMr);
  float* abuf = thread_scratch<PackTag, 1, float>(kKc * std::min(block_rows, round_up(m1 - m0, kMr)) + 8);
  for (Index ic = m0; ic < m1; ic += block_rows) {
    const Index mc = std::min(block_rows, m1 - ic);
    for (Index pc = 0; pc < k; pc += kKc) {
      const Index kc = std::min(kKc, k - pc);
      const float beta_block = pc == 0 ? beta : 1.0f;  // later depth blocks accumulate
      pack_a_fn(ic, mc, pc, kc, abuf);
      for (Index jc = n0; jc < n1; jc += kNc) {
        const Index nc = std::min(kNc, n1 - jc);
        pack_b_fn(jc, nc, pc, kc, bbuf);
        for (Index ir = 0; ir < mc; ir += kMr)
          for (Index jr = 0; jr < nc; jr += kNr)
            micro_kernel(kc, abuf + ir * kc, bbuf + jr * kc, c.row(ic + ir) + jc + jr, c.stride(), alpha, beta_block,
                         std::min<Index>(kMr, mc - ir), std::min<Index>(kNr, nc - jr));
      }
    }
  }
}

/// Products of fewer FLOPs than this run on one thread: a parallel region costs a few microseconds.
inline constexpr double kParallelFlops = 4e6;

/// C [m, n] = alpha * (A-panels) (B-panels) + beta * C over k, split across threads: by columns
/// when n is at least m (each thread packs its own B block and reads all of A), by rows otherwise.
/// Every element's k-sum runs in the same order whatever the split, so the result does not depend on
/// the thread count.
template <class PackA, class PackB>
void run(Index m, Index n, Index k, const PackA& pack_a_fn, const PackB& pack_b_fn, View<float> c, float alpha, float beta) {
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int threads = flops >= kParallelFlops && detail::go_parallel(2) ? num_threads() : 1;
  if (threads == 1) return blocked(0, m, 0, n, k, pack_a_fn, pack_b_fn, c, alpha, beta);
  const bool by_columns = n >= m;
  const Index extent = by_columns ? n : m, quantum = by_columns ? kNr : Index(kMr);
  const Index units = (extent + quantum - 1) / quantum;
  const Index parts = std::min<Index>(threads, units);
  parallel_for(0, parts, [&](Index t) {
    const Index lo = std::min(extent, units * t / parts * quantum), hi = std::min(extent, units * (t + 1) / parts * quantum);
    if (by_columns) blocked(0, m, lo, hi, k, pack_a_fn, pack_b_fn, c, alpha, beta);
    else blocked(lo, hi, 0, n, k, pack_a_fn, pack_b_fn, c, alpha, beta);
  });
}

/// C [m, n] = alpha * op(A) op(B) + beta * C for float views (shapes checked by the caller, k > 0).
inline void gemm(ConstView<float> a, bool ta, ConstView<float> b, bool tb, View<float> c, float alpha, float beta) {
  const Index m = c.rows(), n = c.cols(), k = ta ? a.rows() : a.cols();
  run(
      m, n, k, [&](Index i0, Index mc, Index p0, Index kc, float* out) { pack_a(a, ta, i0, mc, p0, kc, out); },
      [&](Index j0, Index nc, Index p0, Index kc, float* out) { pack_b(b, tb, j0, nc, p0, kc, out); }, c, alpha, beta);
}

}  // namespace sgemm
ENGRAM_NAMESPACE_END
