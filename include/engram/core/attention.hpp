// Fused attention with online softmax (never materialises the Tq x Tk score matrix): MHA and GQA,
// causal (optionally sliding-window) / reverse-causal / bidirectional / custom masks, a query offset,
// the per-row log-sum-exp the backward needs, and an optional sink that receives the exact
// post-softmax probabilities averaged over each GQA group.
#pragma once

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "engram/core/flops.hpp"
#include "engram/core/ops.hpp"
#include "engram/core/parallel.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"
#include "engram/core/weights.hpp"
#include "engram/core/workspace.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Which keys a query sees. Indices are cache rows; query i has index offset + i among the keys.
enum class MaskKind {
  causal,          ///< key j visible iff j <= offset + i (and j > offset + i - window with a window)
  reverse_causal,  ///< key j visible iff j >= offset + i (NAMM's backward-masked scorer)
  none,            ///< every key visible (bidirectional encoders)
  custom           ///< an explicit [Tq, Tk] mask, nonzero = visible
};

/// Receives post-softmax probability tiles, averaged over the query heads of each GQA group. For
/// each KV head, queries arrive in blocks of at most kSinkRows rows aligned to
/// AttentionInput::sink_phase (so a block never straddles a multiple of kSinkRows in the caller's
/// numbering), in increasing order; each block's tiles come in increasing key order, then
/// rows_done(). Only keys some row of the block may see are delivered; the others have probability
/// 0. Different KV heads may be delivered concurrently from different threads (never the same KV
/// head twice at once).
template <class T>
class ProbabilitySink {
 public:
  virtual ~ProbabilitySink() = default;
  /// probs [n_rows, n_keys]: queries q_begin .. q_begin + n_rows - 1, keys k_begin .. k_begin + n_keys - 1.
  virtual void consume(Index kv_head, Index q_begin, Index k_begin, ConstView<T> probs) = 0;
  /// Every tile of queries q_begin .. q_begin + n_rows - 1 has been delivered.
  virtual void rows_done(Index kv_head, Index q_begin, Index n_rows) {
    (void)kv_head, (void)q_begin, (void)n_rows;
  }
};

/// Query rows per sink block: one NAMM hop (16 queries).
inline constexpr Index kSinkRows = 16;

/// Arguments of attention(). Shapes: q and out [Tq, n_heads * head_dim] (head h in columns
/// h*d .. h*d+d-1); k[h], v[h] [Tk_h, head_dim] for each of the n_kv_heads = k.size() KV heads.
/// Query head h reads KV head h / (n_heads / n_kv_heads). `out` may alias `q`.
///
/// 16-bit keys and values (a KV cache stored in f16 or bf16, T = float only): leave k and v empty,
/// set k16/v16 (the stored bit patterns, same shapes) and kv_format. Each block of keys is widened
/// to float as it is read (or once per call for the K panels and V of a many-query step), so the
/// result is the float kernel's on the widened values, bit for bit.
///
/// Sliding window (`window` > 0, causal only): query i, at index p = offset + i among the keys,
/// sees key j iff p - window < j <= p, i.e. the `window` most recent keys including its own, the
/// convention of Hugging Face Mistral (`kv_idx > q_idx - sliding_window` AND `kv_idx <= q_idx`).
/// Keys outside the window are skipped, never computed and masked afterwards.
template <class T>
struct AttentionInput {
  ConstView<T> q;
  std::span<const ConstView<T>> k;
  std::span<const ConstView<T>> v;
  View<T> out;
  Index n_heads = 0;
  Index head_dim = 0;
  T scale = T(0);                         ///< 0 means 1 / sqrt(head_dim)
  MaskKind mask = MaskKind::causal;
  Index offset = -1;                      ///< index of query 0 among the keys; -1: Tk_h - Tq (causal), 0 otherwise
  ConstView<std::uint8_t> custom_mask;    ///< [Tq, Tk] for MaskKind::custom
  ProbabilitySink<T>* sink = nullptr;     ///< optional: receives the group-averaged probabilities (see sink_strip_limit)
  Index sink_phase = 0;                   ///< (caller's index of query 0) mod kSinkRows: aligns the sink blocks
  /// With a sink, each block of kSinkRows queries keeps its group's probability tiles (a strip of
  /// group x kSinkRows x keys values per thread, 1 MiB for 16 queries x 4 heads x 4096 keys) and
  /// normalises them at the end: the sink costs a copy, not a second Q K^T. A strip larger than this
  /// many bytes recomputes the scores instead (+50% FLOPs, no extra memory).
  Index sink_strip_limit = Index(64) << 20;
  /// Optional [Tq, n_heads]: per query row and head, the natural-log log-sum-exp of the scaled,
  /// masked scores (m + log l of the online softmax), what attention_backward() needs; -inf for a
  /// row that sees no key, NaN for a row whose scores are NaN.
  View<T> lse;
  Index window = 0;                       ///< sliding window in keys (causal only); 0: unlimited
  std::span<const ConstView<std::uint16_t>> k16;  ///< keys as f16/bf16 bits (instead of k)
  std::span<const ConstView<std::uint16_t>> v16;  ///< values as f16/bf16 bits (instead of v)
  WeightFormat kv_format = WeightFormat::f32;     ///< f32: k and v; f16 or bf16: k16 and v16
};

/// Number of KV heads of an attention input (of whichever storage it uses).
template <class T>
Index kv_heads(const AttentionInput<T>& in) {
  return in.kv_format == WeightFormat::f32 ? Index(in.k.size()) : Index(in.k16.size());
}
/// Number of keys of KV head h.
template <class T>
Index key_count(const AttentionInput<T>& in, Index h) {
  return in.kv_format == WeightFormat::f32 ? in.k[std::size_t(h)].rows() : in.k16[std::size_t(h)].rows();
}

namespace attention_detail {

template <class T>
using B = simd::batch<T>;
template <class T>
inline constexpr Index W = simd::width<T>;
/// Keys per block: four registers, so a row of the score tile is four accumulators.
template <class T>
inline constexpr Index kKeyBlock = 4 * W<T>;
/// Rows of a register tile. 4 rows x 4 registers = 16 accumulators need the 32 registers of
/// AVX-512; with 16 registers (AVX2) 2 rows leave room for the operands.
template <class T>
inline constexpr int kTileRows = (W<T> * sizeof(T) >= 64) ? 4 : 2;
/// Queries per task on the tiled path: the score tile (64 x kKeyBlock) stays in L1.
inline constexpr Index kQueryBlock = 64;
/// Queries per task with a sliding window: a block of Bq queries spans window + Bq - 1 keys of which
/// each row uses `window`, so the block shrinks with the window to keep that waste near 1/16
/// (window 256: 16 queries, 6%, where 64 would waste 25%); at least 16 rows keep the tiles busy.
inline Index window_query_block(Index window) {
  return std::clamp<Index>(window / 16 / 16 * 16, 16, kQueryBlock);
}
/// Below this many queries per head, transposing K costs more than it saves: use row dots.
inline constexpr Index kTiledMinQueries = 16;

struct ScratchTag {};

/// Visible key range [lo, hi) of one query inside the key block [j0, j0 + bc).
struct Visible {
  Index lo, hi;
};

template <class T>
struct Plan {
  const AttentionInput<T>& in;
  Index n_kv, group, d, d_pad, n_q;
  T scale;
  Index offset(Index kv) const {
    if (in.offset >= 0) return in.offset;
    return in.mask == MaskKind::causal ? key_count(in, kv) - n_q : 0;
  }
  Visible visible(Index kv, Index qi, Index j0, Index bc) const {
    const Index pos = offset(kv) + qi;
    switch (in.mask) {
      case MaskKind::causal:
        return {in.window > 0 ? std::clamp<Index>(pos - in.window + 1 - j0, 0, bc) : 0, std::clamp<Index>(pos + 1 - j0, 0, bc)};
      case MaskKind::reverse_causal: return {std::clamp<Index>(pos - j0, 0, bc), bc};
      default: return {0, bc};
    }
  }
  /// Keys [first, last) that any of the queries q0 .. q1-1 may see.
  std::pair<Index, Index> key_range(Index kv, Index q0, Index q1) const {
    const Index nk = key_count(in, kv);
    switch (in.mask) {
      case MaskKind::causal:
        return {in.window > 0 ? std::clamp<Index>(offset(kv) + q0 - in.window + 1, 0, nk) : 0,
                std::clamp<Index>(offset(kv) + q1, 0, nk)};
      case MaskKind::reverse_causal: return {std::clamp<Index>(offset(kv) + q0, 0, nk), nk};
      default: return {0, nk};
    }
  }
  /// Queries [first, last) that see at least one of the keys j0 .. j1-1 (j0 < j1; for custom masks
  /// every query).
  std::pair<Index, Index> query_range(Index kv, Index j0, Index j1) const {
    const Index off = offset(kv);
    switch (in.mask) {
      case MaskKind::causal:  // off + i >= j0, and off + i - window + 1 <= j1 - 1 with a window
        return {std::clamp<Index>(j0 - off, 0, n_q),
                in.window > 0 ? std::clamp<Index>(j1 - 1 + in.window - off, 0, n_q) : n_q};
      case MaskKind::reverse_causal: return {0, std::clamp<Index>(j1 - off, 0, n_q)};  // off + i <= j1 - 1
      default: return {0, n_q};
    }
  }
};

// Forces a loaded operand into a register. Without it GCC folds the load into every FMA that uses
// it (R loads instead of one), which makes the tile kernels load-bound on cores that sustain one
// 512-bit load per cycle.
template <class T>
inline void pin_register(B<T>& b) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  auto reg = static_cast<typename B<T>::register_type>(b);
  asm("" : "+v"(reg));
  b = B<T>(reg);
#else
  (void)b;
#endif
}

// S [R, NB * W] = Q [R, d] * panel; the panel is (part of) one key block of K transposed, [d, >= NB * W]
// with row stride ldk (contiguous for a whole block, so the d rows it touches never alias in L1).
template <class T, int R, int NB>
void scores_tiled(const T* q, Index ldq, Index d, const T* kt, Index ldk, T* s, Index lds) {
  B<T> acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NB; ++x) acc[r][x] = B<T>(T(0));
  for (Index c = 0; c < d; ++c) {
    const T* krow = kt + c * ldk;
    B<T> kb[NB];
    for (int x = 0; x < NB; ++x) {
      kb[x] = simd::load(krow + x * W<T>);
      if constexpr (R > 1) pin_register(kb[x]);
    }
    for (int r = 0; r < R; ++r) {
      const B<T> qb(q[r * ldq + c]);
      for (int x = 0; x < NB; ++x) acc[r][x] = xsimd::fma(qb, kb[x], acc[r][x]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NB; ++x) simd::store(s + r * lds + x * W<T>, acc[r][x]);
}

// S [n_rows, registers x0 .. x0 + nb) = Q [n_rows, d] * panel registers x0 .. x0 + nb (nb <= 4),
// register-tiled over rows.
template <class T>
void scores_panel(const T* q, Index ldq, Index n_rows, Index d, const T* panel, Index ldk, T* s, Index lds, Index x0,
                  Index nb) {
  constexpr int R = kTileRows<T>;
  const auto run = [&]<int Rows>(Index r) {
    const T* kt = panel + x0 * W<T>;
    T* out = s + r * lds + x0 * W<T>;
    switch (nb) {
      case 4: scores_tiled<T, Rows, 4>(q + r * ldq, ldq, d, kt, ldk, out, lds); break;
      case 3: scores_tiled<T, Rows, 3>(q + r * ldq, ldq, d, kt, ldk, out, lds); break;
      case 2: scores_tiled<T, Rows, 2>(q + r * ldq, ldq, d, kt, ldk, out, lds); break;
      default: scores_tiled<T, Rows, 1>(q + r * ldq, ldq, d, kt, ldk, out, lds); break;
    }
  };
  Index r = 0;
  for (; r + R <= n_rows; r += R) run.template operator()<R>(r);
  for (; r < n_rows; ++r) run.template operator()<1>(r);
}

// S [n_rows, bc] = Q [n_rows, d] * K[j0 : j0 + bc]^T with K in row layout [Tk, ldk >= d_pad]: one
// register dot and one horizontal add per key. (xsimd 8.1's haddp, which would batch the horizontal
// adds, returns permuted lanes on AVX-512; this path is bandwidth-bound on K anyway.)
template <class T>
void scores_rows(const T* q, Index ldq, Index n_rows, Index d, const T* k, Index ldk, Index bc, T* s, Index lds) {
  const Index full = d / W<T>, rem = d % W<T>;
  const auto tail = simd::first_lanes<T>(rem);
  for (Index r = 0; r < n_rows; ++r) {
    const T* qr = q + r * ldq;
    T* sr = s + r * lds;
    for (Index j = 0; j < bc; ++j) {
      const T* kr = k + j * ldk;
      B<T> a(T(0));
      for (Index c = 0; c < full; ++c) a = xsimd::fma(simd::load(qr + c * W<T>), simd::load(kr + c * W<T>), a);
      if (rem) a = xsimd::fma(simd::load(qr + full * W<T>), xsimd::select(tail, simd::load(kr + full * W<T>), B<T>(T(0))), a);
      sr[j] = simd::reduce_add(a);
    }
  }
}

// O [R, NB * W] += A [R, len] * Bm [len, NB * W], accumulators in registers. A(r, i) is
// a[r * lda + i], or a[i * lda + r] when ATrans (a stored [len, R] tile read transposed: the
// backward's P^T dO and dS^T Q use the score tiles without transposing them).
template <class T, int R, int NB, bool ATrans>
void rank_block(const T* a, Index lda, Index len, const T* bm, Index ldb, T* o, Index ldo) {
  B<T> acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NB; ++x) acc[r][x] = simd::load(o + r * ldo + x * W<T>);
  for (Index i = 0; i < len; ++i) {
    B<T> vb[NB];
    for (int x = 0; x < NB; ++x) {
      vb[x] = simd::load(bm + i * ldb + x * W<T>);
      if constexpr (R > 1) pin_register(vb[x]);
    }
    for (int r = 0; r < R; ++r) {
      const B<T> ab(ATrans ? a[i * lda + r] : a[r * lda + i]);
      for (int x = 0; x < NB; ++x) acc[r][x] = xsimd::fma(ab, vb[x], acc[r][x]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NB; ++x) simd::store(o + r * ldo + x * W<T>, acc[r][x]);
}

template <class T, int R, bool ATrans>
void rank_rows(const T* a, Index lda, Index len, const T* bm, Index ldb, T* o, Index ldo, Index d_pad) {
  for (Index c = 0; c < d_pad; c += 4 * W<T>) {
    switch (std::min<Index>(4, (d_pad - c) / W<T>)) {
      case 4: rank_block<T, R, 4, ATrans>(a, lda, len, bm + c, ldb, o + c, ldo); break;
      case 3: rank_block<T, R, 3, ATrans>(a, lda, len, bm + c, ldb, o + c, ldo); break;
      case 2: rank_block<T, R, 2, ATrans>(a, lda, len, bm + c, ldb, o + c, ldo); break;
      default: rank_block<T, R, 1, ATrans>(a, lda, len, bm + c, ldb, o + c, ldo); break;
    }
  }
}

// O [n_rows, d_pad] += A [n_rows, len] * Bm [len, d_pad], register-tiled over rows (A as rank_block
// reads it). The forward's P V is rank_update<false>(P, V); the backward's dQ += dS K is too, and
// dV += P^T dO, dK += dS^T Q are rank_update<true>.
template <class T, bool ATrans>
void rank_update(const T* a, Index lda, Index n_rows, Index len, const T* bm, Index ldb, T* o, Index ldo, Index d_pad) {
  constexpr int R = kTileRows<T>;
  const auto a_rows = [&](Index r) { return ATrans ? a + r : a + r * lda; };
  Index r = 0;
  for (; r + R <= n_rows; r += R) rank_rows<T, R, ATrans>(a_rows(r), lda, len, bm, ldb, o + r * ldo, ldo, d_pad);
  for (; r < n_rows; ++r) rank_rows<T, 1, ATrans>(a_rows(r), lda, len, bm, ldb, o + r * ldo, ldo, d_pad);
}

// Masks s[0, bc) outside `vis` (and where the custom mask row is 0) with -inf, and the columns up
// to bc rounded up to whole registers (the row has room: kKeyBlock columns), so the online softmax
// can run whole registers over any visible range.
template <class T>
void apply_mask(T* s, Index bc, Visible vis, const std::uint8_t* custom_row) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  std::fill(s, s + vis.lo, neg_inf);
  std::fill(s + vis.hi, s + (bc + W<T> - 1) / W<T> * W<T>, neg_inf);
  if (custom_row)
    for (Index j = vis.lo; j < vis.hi; ++j)
      if (!custom_row[j]) s[j] = neg_inf;
}

// One online-softmax step of n query rows over a key block: row r of s (stride lds) holds masked
// scores (apply_mask: -inf outside vis[r] up to bc rounded to registers), its visible keys vis[r];
// on return it holds exp(s - m_new) (0 where masked); m, l and the output rows o [n, d_pad] are
// rescaled. The max and the exp run over vis[r] widened to whole registers (the extra columns are
// -inf, whose exp is 0): no scalar tails at a window's or the diagonal's unaligned edges. The
// rescaling factors exp(m - m_new) of all rows are one vector pass (a scalar exp per row and block
// cost 4% of a long prefill). NaN scores make m and l NaN (they stay NaN through later blocks), so
// the row's output is NaN, never zeros.
template <class T>
void online_softmax_rows(T* s, Index lds, Index n, Index bc, const Visible* vis, T* m, T* l, T* o, Index d_pad) {
  T* m_new = thread_scratch<ScratchTag, 5, T>(n);
  T* alpha = thread_scratch<ScratchTag, 6, T>(n);
  std::uint8_t* live = thread_scratch<ScratchTag, 6, std::uint8_t>(n);
  const auto whole_registers = [&](Visible v) {
    return Visible{v.lo / W<T> * W<T>, std::min((v.hi + W<T> - 1) / W<T> * W<T>, (bc + W<T> - 1) / W<T> * W<T>)};
  };
  for (Index r = 0; r < n; ++r) {
    T* row = s + r * lds;
    const Visible wide = whole_registers(vis[r]);
    const T block_max = simd::max(row + wide.lo, wide.hi - wide.lo);
    if (!(block_max > -std::numeric_limits<T>::infinity())) {
      // No finite maximum: every entry masked (-inf), or NaN scores (max may drop NaN, so look).
      for (Index j = vis[r].lo; j < vis[r].hi; ++j)
        if (std::isnan(row[j])) {
          m[r] = l[r] = std::numeric_limits<T>::quiet_NaN();
          break;
        }
      std::fill(row, row + bc, T(0));
      live[r] = 0, alpha[r] = T(0);
      continue;
    }
    live[r] = 1;
    m_new[r] = std::max(m[r], block_max);
    alpha[r] = m[r] - m_new[r];  // -inf on the first visible block (m = -inf): alpha 0
  }
  exp_shifted(alpha, n, T(0));
  for (Index r = 0; r < n; ++r) {
    T* row = s + r * lds;
    if (!live[r]) continue;  // no finite maximum: zeros (filled above)
    const Visible wide = whole_registers(vis[r]);
    const T block_sum = exp_shifted(row + wide.lo, wide.hi - wide.lo, m_new[r]);
    std::fill(row, row + wide.lo, T(0));
    if (wide.hi < bc) std::fill(row + wide.hi, row + bc, T(0));  // wide.hi may pass bc (its register's end)
    l[r] = l[r] * alpha[r] + block_sum;
    if (alpha[r] != T(1)) simd::scale(alpha[r], o + r * d_pad, d_pad);
    m[r] = m_new[r];
  }
}


// Keys and values of one KV head in the layouts the kernels read: V (and K on the row path) with
// rows readable up to d_pad; on the tiled path K transposed block by block into panels
// [n_blocks, d, kKeyBlock] (a panel is contiguous; columns past the last key are zero). With 16-bit
// storage on the row path, k16/v16 hold the stored rows and each key block is widened as it is read.
template <class T>
struct KeyValues {
  Index nk = 0;
  ConstView<T> k, v;  // [nk, >= d_pad readable]
  Tensor<T> panels;   // tiled path only
  Tensor<T> k_copy, v_copy;
  ConstView<std::uint16_t> k16, v16;  // row path with 16-bit storage only
  WeightFormat format = WeightFormat::f32;
  bool widen_blocks() const { return format != WeightFormat::f32 && panels.empty(); }
};

// Rows [r0, r0 + n) of 16-bit storage widened to T (= float: validate() refuses 16-bit storage
// for double) into out [n, ld].
template <class T>
void widen_rows(ConstView<std::uint16_t> x, WeightFormat format, Index r0, Index n, T* out, Index ld) {
  if constexpr (std::is_same_v<T, float>) engram::widen_rows(x, format, r0, n, out, ld);
  else (void)x, (void)format, (void)r0, (void)n, (void)out, (void)ld;
}

// All rows of 16-bit storage x widened into a padded tensor.
template <class T>
Tensor<T> widened(ConstView<std::uint16_t> x, WeightFormat format) {
  Tensor<T> t({x.rows(), x.cols()});
  if (x.rows() > 0) widen_rows(x, format, 0, x.rows(), t.data(), t.stride());
  return t;
}

template <class T>
ConstView<T> readable_padded(ConstView<T> x, Index d_pad, Tensor<T>& storage) {
  if (x.is_padded() && x.stride() >= d_pad) return x;
  storage = Tensor<T>({x.rows(), x.cols()});
  copy(x, storage.view());
  return storage.view();
}

// x [n, d] transposed block by block into panels [n_blocks, d, kKeyBlock]: panel b holds rows
// b*KB .. b*KB+KB-1 as columns (contiguous, so a score tile streams it); columns past n are zero.
template <class T>
Tensor<T> key_panels(ConstView<T> x) {
  constexpr Index KB = kKeyBlock<T>;
  const Index n = x.rows(), d = x.cols();
  Tensor<T> panels({std::max<Index>((n + KB - 1) / KB, 1), d, KB});
  for (Index j = 0; j < n; ++j) {
    const T* src = x.row(j);
    T* dst = panels.mat(j / KB).data() + j % KB;
    for (Index c = 0; c < d; ++c) dst[c * KB] = src[c];
  }
  return panels;
}

// Query rows of a task: row r is query qi[r] of query head qh[r].
struct RowSet {
  const Index* qi;
  const Index* qh;
  Index n;
};

template <class T>
void gather_queries(const Plan<T>& plan, RowSet rows, T* qs, Index ldq) {
  for (Index r = 0; r < rows.n; ++r) {
    const T* src = plan.in.q.row(rows.qi[r]) + rows.qh[r] * plan.d;
    T* dst = qs + r * ldq;
    for (Index c = 0; c < plan.d; ++c) dst[c] = src[c] * plan.scale;
    std::fill(dst + plan.d, dst + ldq, T(0));
  }
}

// Scores of all rows against keys [j0 + a, j0 + b) of the block at j0 into s [n, lds] (columns
// relative to j0; the tiled path computes whole registers around [a, b), other columns are left as
// they were).
template <class T>
void block_scores(const Plan<T>& plan, const KeyValues<T>& kv, const T* qs, Index ldq, Index n, Index j0, Index a,
                  Index b, T* s, Index lds) {
  if (!kv.panels.empty()) {
    constexpr Index KB = kKeyBlock<T>;
    const Index x0 = a / W<T>, x1 = (b + W<T> - 1) / W<T>;
    scores_panel(qs, ldq, n, plan.d, kv.panels.mat(j0 / KB).data(), KB, s, lds, x0, x1 - x0);
  } else if (kv.widen_blocks()) {
    T* kb = thread_scratch<ScratchTag, 17, T>(kKeyBlock<T> * plan.d_pad);
    widen_rows(kv.k16, kv.format, j0 + a, b - a, kb, plan.d_pad);
    scores_rows(qs, ldq, n, plan.d, kb, plan.d_pad, b - a, s + a, lds);
  } else {
    scores_rows(qs, ldq, n, plan.d, kv.k.row(0) + (j0 + a) * kv.k.stride(), kv.k.stride(), b - a, s + a, lds);
  }
}

// Value rows j .. j + n - 1 (n <= kKeyBlock) as T: the stored rows, or widened into scratch.
template <class T>
std::pair<const T*, Index> value_rows(const Plan<T>& plan, const KeyValues<T>& kv, Index j, Index n) {
  if (!kv.widen_blocks()) return {kv.v.row(j), kv.v.stride()};
  T* vb = thread_scratch<ScratchTag, 18, T>(kKeyBlock<T> * plan.d_pad);
  widen_rows(kv.v16, kv.format, j, n, vb, plan.d_pad);
  return {vb, plan.d_pad};
}

template <class T>
const std::uint8_t* custom_row(const Plan<T>& plan, Index qi, Index j0) {
  return plan.in.mask == MaskKind::custom ? plan.in.custom_mask.row(qi) + j0 : nullptr;
}

// The probability tiles of a flash task kept for the sink: row r's key block b (keys
// j_first + b*KB ..) holds exp(s - m_block) (zeros where masked) at p[r * ld + b*KB ..], and the
// running maximum it was taken against at m_block[r * n_blocks + b]; with the final m and l of the
// row, p * exp(m_block - m) / l is the exact softmax, without computing Q K^T again.
template <class T>
struct ProbabilityStrip {
  T* p;
  Index ld;
  Index j_first;
  T* m_block;
  Index n_blocks;
};

// Copies the tile s [n, bc] (row stride kKeyBlock) of the key block at j0, and the maxima m it was
// taken against, into the strip.
template <class T>
void keep_tile(const ProbabilityStrip<T>& strip, Index j0, const T* s, Index n, Index bc, const T* m) {
  const Index b = (j0 - strip.j_first) / kKeyBlock<T>;
  for (Index r = 0; r < n; ++r) {
    std::copy_n(s + r * kKeyBlock<T>, bc, strip.p + r * strip.ld + b * kKeyBlock<T>);
    strip.m_block[r * strip.n_blocks + b] = m[r];
  }
}

// Online-softmax attention of a set of query rows against one KV head. When `m_out`/`l_out` are
// given, the final row maxima and normalisers are stored there (the sink needs them); with a strip,
// every block's probability tile is kept there as well.
template <class T>
void flash_task(const Plan<T>& plan, Index kv_head, const KeyValues<T>& kv, RowSet rows, T* m_out = nullptr, T* l_out = nullptr,
                const ProbabilityStrip<T>* strip = nullptr) {
  constexpr Index KB = kKeyBlock<T>;
  const Index n = rows.n, d_pad = plan.d_pad;
  T* qs = thread_scratch<ScratchTag, 0, T>(n * d_pad);
  T* o = thread_scratch<ScratchTag, 1, T>(n * d_pad);
  T* s = thread_scratch<ScratchTag, 2, T>(n * KB);
  T* m = thread_scratch<ScratchTag, 3, T>(n);
  T* l = thread_scratch<ScratchTag, 4, T>(n);
  Visible* vis = thread_scratch<ScratchTag, 0, Visible>(n);
  gather_queries(plan, rows, qs, d_pad);
  std::fill(o, o + n * d_pad, T(0));
  std::fill(m, m + n, -std::numeric_limits<T>::infinity());
  std::fill(l, l + n, T(0));

  Index q_lo = rows.qi[0], q_hi = rows.qi[0] + 1;
  for (Index r = 1; r < n; ++r) q_lo = std::min(q_lo, rows.qi[r]), q_hi = std::max(q_hi, rows.qi[r] + 1);
  const auto [first, last] = plan.key_range(kv_head, q_lo, q_hi);
  for (Index j0 = first / KB * KB; j0 < last; j0 += KB) {
    const Index bc = std::min(KB, kv.nk - j0);
    // Keys [a, b) of this block are the ones some row sees: the first and last blocks of a range
    // (the causal diagonal, the far edge of a window) compute and accumulate only those.
    const Index a = std::max<Index>(first - j0, 0), b = std::min(bc, last - j0);
    if (a >= b) {
      if (strip) {
        std::fill_n(s, n * KB, T(0));
        keep_tile(*strip, j0, s, n, bc, m);
      }
      continue;
    }
    block_scores(plan, kv, qs, d_pad, n, j0, a, b, s, KB);
    for (Index r = 0; r < n; ++r) {
      vis[r] = plan.visible(kv_head, rows.qi[r], j0, bc);
      apply_mask(s + r * KB, bc, vis[r], custom_row(plan, rows.qi[r], j0));
    }
    online_softmax_rows(s, KB, n, bc, vis, m, l, o, d_pad);
    if (strip) keep_tile(*strip, j0, s, n, bc, m);
    const auto [vrows, ldv] = value_rows(plan, kv, j0 + a, b - a);
    rank_update<T, false>(s + a, KB, n, b - a, vrows, ldv, o, d_pad, d_pad);  // O += P V
  }
  for (Index r = 0; r < n; ++r) {
    T* dst = plan.in.out.row(rows.qi[r]) + rows.qh[r] * plan.d;
    // l == 0 only when the mask hides every key: zeros. A NaN l gives a NaN row.
    const T inv = l[r] == T(0) ? T(0) : T(1) / l[r];
    for (Index c = 0; c < plan.d; ++c) dst[c] = o[r * d_pad + c] * inv;
    if (!plan.in.lse.empty())
      plan.in.lse(rows.qi[r], rows.qh[r]) = l[r] == T(0) ? -std::numeric_limits<T>::infinity() : m[r] + std::log(l[r]);
  }
  if (m_out) std::copy_n(m, n, m_out);
  if (l_out) std::copy_n(l, n, l_out);
}

// sink_task without the strip: pass 1 is the flash algorithm per head (outputs, row maxima m and
// normalisers l); pass 2 recomputes each score tile, normalises it with the final m and l, averages
// it over the group and hands it over. Memory stays O(rows x block); the cost is one more Q K^T.
template <class T>
void sink_task_recompute(const Plan<T>& plan, Index kv_head, const KeyValues<T>& kv, Index q0, Index q1) {
  constexpr Index KB = kKeyBlock<T>;
  const Index n = q1 - q0, d_pad = plan.d_pad, G = plan.group;
  T* m = thread_scratch<ScratchTag, 7, T>(G * kSinkRows);
  T* l = thread_scratch<ScratchTag, 8, T>(G * kSinkRows);
  T* qs = thread_scratch<ScratchTag, 9, T>(G * kSinkRows * d_pad);
  T* s = thread_scratch<ScratchTag, 10, T>(kSinkRows * KB);
  T* avg = thread_scratch<ScratchTag, 11, T>(kSinkRows * KB);
  Index qi[kSinkRows], qh[kSinkRows];
  for (Index g = 0; g < G; ++g) {
    for (Index r = 0; r < n; ++r) qi[r] = q0 + r, qh[r] = kv_head * G + g;
    flash_task(plan, kv_head, kv, RowSet{qi, qh, n}, m + g * kSinkRows, l + g * kSinkRows);
    gather_queries(plan, RowSet{qi, qh, n}, qs + g * kSinkRows * d_pad, d_pad);
  }
  const auto [first, last] = plan.key_range(kv_head, q0, q1);
  const T inv_group = T(1) / T(G);
  for (Index j0 = first / KB * KB; j0 < last; j0 += KB) {
    const Index bc = std::min(KB, kv.nk - j0);
    std::fill(avg, avg + n * KB, T(0));
    for (Index g = 0; g < G; ++g) {
      block_scores(plan, kv, qs + g * kSinkRows * d_pad, d_pad, n, j0, 0, bc, s, KB);
      for (Index r = 0; r < n; ++r) {
        T* row = s + r * KB;
        const Visible vis = plan.visible(kv_head, q0 + r, j0, bc);
        apply_mask(row, bc, vis, custom_row(plan, q0 + r, j0));
        const T lr = l[g * kSinkRows + r];
        if (lr == T(0) || vis.hi <= vis.lo) continue;  // a row that sees nothing has no probability (NaN stays NaN)
        exp_shifted(row + vis.lo, vis.hi - vis.lo, m[g * kSinkRows + r]);
        simd::axpy(inv_group / lr, row + vis.lo, avg + r * KB + vis.lo, vis.hi - vis.lo);
      }
    }
    plan.in.sink->consume(kv_head, q0, j0, ConstView<T>(avg, n, bc, KB));
  }
  plan.in.sink->rows_done(kv_head, q0, n);
}

// Attention of queries [q0, q1) for every query head of one KV head, then the exact probabilities
// for the sink, averaged over the group. The group's rows (G heads x n queries, row g * n + q) run as
// flash tasks of up to kQueryBlock rows that keep their probability tiles in a strip (one Q K^T and
// one P V per row, like attention without a sink); each tile is then normalised with its row's final
// m and l, averaged over the group and handed over. Over sink_strip_limit bytes, the recomputing
// path below instead.
template <class T>
void sink_task(const Plan<T>& plan, Index kv_head, const KeyValues<T>& kv, Index q0, Index q1) {
  constexpr Index KB = kKeyBlock<T>;
  const Index n = q1 - q0, G = plan.group, rows = G * n;
  const auto [first, last] = plan.key_range(kv_head, q0, q1);
  const Index j_first = first / KB * KB, n_blocks = last > j_first ? (last - j_first + KB - 1) / KB : 0;
  const Index ld = n_blocks * KB;
  if (Index(sizeof(T)) * rows * ld > plan.in.sink_strip_limit) return sink_task_recompute(plan, kv_head, kv, q0, q1);
  T* m = thread_scratch<ScratchTag, 7, T>(rows);
  T* l = thread_scratch<ScratchTag, 8, T>(rows);
  T* avg = thread_scratch<ScratchTag, 11, T>(kSinkRows * KB);
  const ProbabilityStrip<T> strip{thread_scratch<ScratchTag, 12, T>(rows * ld), ld, j_first,
                                  thread_scratch<ScratchTag, 13, T>(rows * n_blocks), n_blocks};
  Index* qi = thread_scratch<ScratchTag, 14, Index>(rows);
  Index* qh = thread_scratch<ScratchTag, 15, Index>(rows);
  for (Index g = 0; g < G; ++g)
    for (Index r = 0; r < n; ++r) qi[g * n + r] = q0 + r, qh[g * n + r] = kv_head * G + g;
  // Whole heads per task, as many as fit kQueryBlock rows (4 heads of 16 queries: one task).
  const Index heads_per_task = std::max<Index>(kQueryBlock / std::max<Index>(n, 1), 1);
  for (Index g0 = 0; g0 < G; g0 += heads_per_task) {
    const Index r0 = g0 * n, nr = std::min(heads_per_task, G - g0) * n;
    const ProbabilityStrip<T> part{strip.p + r0 * ld, ld, j_first, strip.m_block + r0 * n_blocks, n_blocks};
    flash_task(plan, kv_head, kv, RowSet{qi + r0, qh + r0, nr}, m + r0, l + r0, &part);
  }
  // Per row and block: the factor exp(m_block - m) / (G l) that turns the block's exp(s - m_block)
  // into probability / G (the exps in one vector pass: a scalar one per row and block was 3% of a
  // 4k-token layer's attention).
  T* factor = thread_scratch<ScratchTag, 16, T>(rows * std::max<Index>(n_blocks, 1));
  const T inv_group = T(1) / T(G);
  for (Index r = 0; r < rows; ++r)
    for (Index b = 0; b < n_blocks; ++b) factor[r * n_blocks + b] = strip.m_block[r * n_blocks + b] - m[r];
  exp_shifted(factor, rows * n_blocks, T(0));
  for (Index r = 0; r < rows; ++r)
    simd::scale(l[r] == T(0) ? T(0) : inv_group / l[r], factor + r * n_blocks, n_blocks);
  for (Index b = 0; b < n_blocks; ++b) {
    const Index j0 = j_first + b * KB, bc = std::min(KB, kv.nk - j0);
    std::fill(avg, avg + n * KB, T(0));
    for (Index g = 0; g < G; ++g)
      for (Index q = 0; q < n; ++q) {
        const Index r = g * n + q;
        const Visible vis = plan.visible(kv_head, q0 + q, j0, bc);
        if (l[r] == T(0) || vis.hi <= vis.lo) continue;  // a row that sees nothing has no probability (NaN stays NaN)
        simd::axpy(factor[r * n_blocks + b], strip.p + r * ld + b * KB + vis.lo, avg + q * KB + vis.lo, vis.hi - vis.lo);
      }
    plan.in.sink->consume(kv_head, q0, j0, ConstView<T>(avg, n, bc, KB));
  }
  plan.in.sink->rows_done(kv_head, q0, n);
}

template <class T>
void validate(const AttentionInput<T>& in) {
  constexpr const char* where = "attention";
  check(in.n_heads > 0 && in.head_dim > 0, where, "n_heads and head_dim must be positive, got ", in.n_heads, " and ",
        in.head_dim);
  const bool half = in.kv_format != WeightFormat::f32;
  check_kv_format<T>(in.kv_format, where);
  if (half) {
    check(in.k.empty() && in.v.empty(), where, "kv_format ", format_name(in.kv_format), " reads k16/v16; k and v must be empty, got ",
          in.k.size(), " and ", in.v.size(), " heads");
  } else {
    check(in.k16.empty() && in.v16.empty(), where, "k16/v16 are set (", in.k16.size(), " heads) but kv_format is f32");
  }
  const Index n_kv = kv_heads(in), n_v = half ? Index(in.v16.size()) : Index(in.v.size());
  check(n_kv > 0 && n_v == n_kv, where, "expected the same positive number of K and V heads, got ", n_kv, " and ", n_v);
  check(in.n_heads % n_kv == 0, where, in.n_heads, " query heads are not a multiple of ", n_kv, " KV heads");
  check_shape(in.q, -1, in.n_heads * in.head_dim, where, "q");
  check_shape(in.out, in.q.rows(), in.n_heads * in.head_dim, where, "out");
  for (Index h = 0; h < n_kv; ++h) {
    const std::string kn = "k[" + std::to_string(h) + "]", vn = "v[" + std::to_string(h) + "]";
    if (half) {
      check_shape(in.k16[h], -1, in.head_dim, where, kn);
      check_shape(in.v16[h], in.k16[h].rows(), in.head_dim, where, vn);
    } else {
      check_shape(in.k[h], -1, in.head_dim, where, kn);
      check_shape(in.v[h], in.k[h].rows(), in.head_dim, where, vn);
    }
    if (in.mask == MaskKind::causal && in.offset < 0)
      check(key_count(in, h) >= in.q.rows(), where, "causal attention with ", in.q.rows(), " queries needs at least as many keys, KV head ", h, " has ", key_count(in, h));
  }
  if (in.mask == MaskKind::custom) {
    for (Index h = 0; h < n_kv; ++h)
      check(key_count(in, h) == key_count(in, 0), where, "a custom mask needs the same key count in every KV head");
    check_shape(in.custom_mask, in.q.rows(), key_count(in, 0), where, "custom_mask");
  }
  check(in.offset >= -1, where, "offset must be >= 0 (or -1 for the default), got ", in.offset);
  // Query 0's index among the keys: past the last key every causal row would see all keys and every
  // reverse-causal row none, which is a caller's bookkeeping error, not a mask.
  for (Index h = 0; h < n_kv && in.offset >= 0; ++h)
    check(in.offset <= key_count(in, h), where, "offset ", in.offset, " is past the ", key_count(in, h), " keys of KV head ", h);
  check(in.window >= 0, where, "window must be >= 0 (0: no window), got ", in.window);
  check(in.sink_strip_limit >= 0, where, "sink_strip_limit must be >= 0 bytes (0: always recompute), got ", in.sink_strip_limit);
  check(in.window == 0 || in.mask == MaskKind::causal, where, "a sliding window (", in.window,
        ") needs MaskKind::causal, got mask kind ", int(in.mask));
  if (in.lse.rows() != 0 || in.lse.cols() != 0) check_shape(in.lse, in.q.rows(), in.n_heads, where, "lse");
}

}  // namespace attention_detail

/// Multi-head attention softmax(scale * Q K^T + mask) V per head, fused: scores are produced in
/// register tiles and consumed by an online softmax, so memory stays O(rows x block). With a sink,
/// each block of kSinkRows queries keeps its probability tiles (AttentionInput::sink_strip_limit)
/// and hands the exact probabilities over, averaged across each GQA group. Rows that see no key (by the mask)
/// produce zeros; NaN scores produce a NaN row. With `lse` set, writes each row's log-sum-exp.
template <class T>
void attention(const AttentionInput<T>& in) {
  using namespace attention_detail;
  validate(in);
  const Index n_q = in.q.rows();
  if (n_q == 0) return;
  const Index n_kv = kv_heads(in);
  const Index d_pad = padded_cols<T>(in.head_dim);
  const Plan<T> plan{in, n_kv, in.n_heads / n_kv, in.head_dim, d_pad, n_q,
                     in.scale != T(0) ? in.scale : T(1) / std::sqrt(T(in.head_dim))};
  const bool tiled = n_q >= kTiledMinQueries;

  std::vector<KeyValues<T>> kvs(static_cast<std::size_t>(n_kv));
  parallel_for(0, n_kv, [&](Index h) {
    KeyValues<T>& kv = kvs[std::size_t(h)];
    kv.nk = key_count(in, h);
    kv.format = in.kv_format;
    if (in.kv_format != WeightFormat::f32) {
      // Many queries: widen once per call (the panels are a copy anyway). Few (decode): per key block.
      if (tiled) {
        kv.k_copy = widened<T>(in.k16[h], in.kv_format);
        kv.panels = key_panels(ConstView<T>(kv.k_copy.view()));
        kv.v_copy = widened<T>(in.v16[h], in.kv_format);
        kv.v = kv.v_copy.view();
      } else {
        kv.k16 = in.k16[h], kv.v16 = in.v16[h];
      }
      return;
    }
    kv.v = readable_padded(in.v[h], d_pad, kv.v_copy);
    kv.k = in.k[h];
    if (tiled) {
      kv.panels = key_panels(in.k[h]);
    } else {
      kv.k = readable_padded(in.k[h], d_pad, kv.k_copy);
    }
  });

  if (in.sink) {
    parallel_for(0, n_kv, [&](Index h) {
      // The first block is short when the caller's numbering does not start on a block boundary.
      for (Index q0 = 0; q0 < n_q;) {
        const Index q1 = std::min(n_q, q0 == 0 ? kSinkRows - (in.sink_phase % kSinkRows) : q0 + kSinkRows);
        sink_task(plan, h, kvs[std::size_t(h)], q0, q1);
        q0 = q1;
      }
    });
  } else if (tiled) {
    const Index qb = in.window > 0 ? window_query_block(in.window) : kQueryBlock;
    const Index n_blocks = (n_q + qb - 1) / qb;
    parallel_for_dynamic(0, in.n_heads * n_blocks, [&](Index task) {
      const Index qh = task / n_blocks, q0 = (task % n_blocks) * qb;
      const Index n = std::min(qb, n_q - q0);
      Index qi[kQueryBlock], heads[kQueryBlock];
      for (Index r = 0; r < n; ++r) qi[r] = q0 + r, heads[r] = qh;
      flash_task(plan, qh / plan.group, kvs[std::size_t(qh / plan.group)], RowSet{qi, heads, n});
    });
  } else {
    parallel_for(0, n_kv, [&](Index h) {
      std::vector<Index> qi, heads;
      for (Index i = 0; i < n_q; ++i)
        for (Index g = 0; g < plan.group; ++g) qi.push_back(i), heads.push_back(h * plan.group + g);
      flash_task(plan, h, kvs[std::size_t(h)], RowSet{qi.data(), heads.data(), Index(qi.size())});
    });
  }
}

/// How many times attention(in) computes each score Q K^T: 1, or 2 when a sink's probability strip
/// (group x kSinkRows x keys values) exceeds AttentionInput::sink_strip_limit for the longest KV
/// head and the sink recomputes them (what FLOP reports count).
template <class T>
int sink_score_passes(const AttentionInput<T>& in) {
  if (!in.sink || kv_heads(in) == 0) return 1;
  Index longest = 0;
  for (Index h = 0; h < kv_heads(in); ++h) longest = std::max(longest, key_count(in, h));
  const Index group = in.n_heads / kv_heads(in), rows = group * std::min(kSinkRows, in.q.rows());
  const Index keys = (longest + attention_detail::kKeyBlock<T> - 1) / attention_detail::kKeyBlock<T> * attention_detail::kKeyBlock<T>;
  return Index(sizeof(T)) * rows * keys > in.sink_strip_limit ? 2 : 1;
}

/// Number of (query, key) pairs attention() evaluates for one query head of `kv_head` (the mask and
/// the sliding window applied): the analytic count behind FLOP reports (2 * pairs * head_dim per product).
template <class T>
double visible_pairs(const AttentionInput<T>& in, Index kv_head) {
  const Index n_q = in.q.rows(), nk = key_count(in, kv_head);
  switch (in.mask) {
    case MaskKind::causal: {
      const Index off = in.offset >= 0 ? in.offset : nk - n_q;
      double pairs = 0;
      for (Index i = 0; i < n_q; ++i)
        pairs += double(std::clamp<Index>(off + i + 1, 0, nk) -
                        (in.window > 0 ? std::clamp<Index>(off + i - in.window + 1, 0, nk) : 0));
      return pairs;
    }
    case MaskKind::reverse_causal: {
      const Index off = std::max<Index>(in.offset, 0);
      double pairs = 0;
      for (Index i = 0; i < n_q; ++i) pairs += double(nk - std::clamp<Index>(off + i, 0, nk));
      return pairs;
    }
    case MaskKind::none: return double(n_q) * double(nk);
    case MaskKind::custom: {
      double pairs = 0;
      for (Index i = 0; i < n_q; ++i)
        for (Index j = 0; j < nk; ++j) pairs += in.custom_mask(i, j) != 0;
      return pairs;
    }
  }
  return 0;
}

ENGRAM_NAMESPACE_END
