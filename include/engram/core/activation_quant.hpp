// Activations quantised to int8 blocks for products with q8/q4 weights (llama.cpp's Q8_0
// activations): the quantiser, and the integer dot kernel of the decode row tile (AVX-512 VNNI,
// AVX2, scalar). A q8/q4 product is defined as W x Q8(x), in decode and in prefill alike.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engram/core/half.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/weights.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Activation quantisation: each block of kQuantBlock values of a row becomes 32 int8 q = round(x /
/// d) with d = max |x| / 127 (float), so x ~= d q. Products of q8/q4 weights with x then sum exact
/// integer dot products per block and scale each by (weight scale x activation scale): the weights
/// are never converted to float, which is what makes a compressed decode step cheaper than fp32.
namespace act_quant {

/// Floats and ints stored per block for the scale and the bias, one SIMD half-register (8 lanes)
/// each, so a kernel loads the scales of two blocks as one 16-lane register.
inline constexpr Index kLanes = 8;

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
inline constexpr bool kVnni = true;
#else
inline constexpr bool kVnni = false;
#endif

/// Blocks a row of k values is stored in: whole quantisation blocks, rounded up to an even count
/// (the AVX-512 kernel takes two blocks per register; the extra block is zeros).
inline Index padded_blocks(Index k) {
  const Index blocks = (k + kQuantBlock - 1) / kQuantBlock;
  return (blocks + 1) / 2 * 2;
}

/// The integer offset the kernel's unsigned operand carries for format F, which the per-block
/// bias -offset * sum(q) of the activation row cancels: q4 weights are stored as q + 8 in [0, 15];
/// with VNNI, q8 weights are made unsigned as q + 128 (AVX2's maddubs would overflow int16 with
/// that, so it takes |q| and moves the sign onto the activations instead: no offset).
template <WeightFormat F>
inline constexpr int offset() {
  if constexpr (F == WeightFormat::q4) return 8;
  else return kVnni ? 128 : 0;
}

/// A row quantised for format F: q [padded_blocks * 32], d and bias [padded_blocks * kLanes]
/// (block b's scale repeated in d[b * 8 .. b * 8 + 8); its bias in bias[b * 8], zeros beside it).
struct Row {
  const std::int8_t* q;
  const float* d;
  const std::int32_t* bias;
};

namespace detail {
/// One block of n <= kQuantBlock values of x (the rest of the block zeros) into q [kQuantBlock]:
/// returns sum(q) and sets the block's scale. The obvious scalar rule: the reference of the SIMD
/// block below, and the quantiser of a row's partial last block.
inline std::int32_t quantise_block_scalar(const float* x, Index n, std::int8_t* q, float& scale) {
  float amax = 0;
  for (Index i = 0; i < n; ++i) amax = std::max(amax, std::abs(x[i]));
  bool finite = std::isfinite(amax);
  for (Index i = 0; i < n && finite; ++i) finite = !std::isnan(x[i]);  // max drops NaN
  // amax below 127 / FLT_MAX (about 4e-37) would make 127 / amax infinite: such a block is zeros.
  const bool tiny = finite && !(127.0f / amax < INFINITY);
  scale = !finite ? NAN : tiny ? 0.0f : amax / 127.0f;
  const float inv = finite && !tiny ? 127.0f / amax : 0.0f;
  std::int32_t sum = 0;
  for (Index i = 0; i < kQuantBlock; ++i) {
    const int v = i < n && finite ? int(std::nearbyint(std::clamp(x[i] * inv, -127.0f, 127.0f))) : 0;
    q[i] = std::int8_t(v);
    sum += v;
  }
  return sum;
}

/// A whole block of kQuantBlock values, in SIMD registers: the same float operations per value as
/// the scalar rule (max is exact in any order; the conversion rounds half to even like nearbyint),
/// so the two agree bit for bit. Decode quantises every input row of every q8/q4 product: this is
/// 3-4% of a q4 decode step in scalar code.
inline std::int32_t quantise_block(const float* x, std::int8_t* q, float& scale) {
  using B = simd::batch<float>;
  constexpr Index W = simd::width<float>;
  static_assert(kQuantBlock % W == 0);
  B amax(0.0f);
  bool nan = false;
  for (Index i = 0; i < kQuantBlock; i += W) {
    const B v = simd::load(x + i);
    amax = xsimd::max(amax, xsimd::abs(v));
    nan |= xsimd::any(xsimd::isnan(v));
  }
  const float m = simd::reduce_max(amax);
  const bool finite = std::isfinite(m) && !nan;
  const bool tiny = finite && !(127.0f / m < INFINITY);
  if (!finite || tiny) {
    scale = !finite ? NAN : 0.0f;
    std::memset(q, 0, kQuantBlock);
    return 0;
  }
  scale = m / 127.0f;
  const B inv(127.0f / m), lo(-127.0f), hi(127.0f);
  alignas(64) std::int32_t v[kQuantBlock];
  for (Index i = 0; i < kQuantBlock; i += W)
    xsimd::nearbyint_as_int(xsimd::min(xsimd::max(simd::load(x + i) * inv, lo), hi)).store_aligned(v + i);
  std::int32_t sum = 0;
  for (Index i = 0; i < kQuantBlock; ++i) q[i] = std::int8_t(v[i]), sum += v[i];
  return sum;
}
}  // namespace detail

/// Quantises x [0, k) (values past k are zeros) for a product with weights of offset `off`.
/// A block of zeros (or of magnitudes below 4e-37) gets d = 0; a block holding NaN or infinity gets
/// d = NaN, so the product is NaN as an fp32 product would be (never an out-of-range conversion).
/// Rounding to int8 is a step function: inputs that differ in their last bit (prefill's attention
/// against decode's) can round one value to a neighbouring step, so q8/q4 products of such inputs
/// agree to about one step (amax / 127) of one value, not to float rounding.
/// `vectorised` = false takes the scalar rule for every block (the tests' reference).
inline void quantise(const float* x, Index k, int off, std::int8_t* q, float* d, std::int32_t* bias, bool vectorised = true) {
  const Index blocks = padded_blocks(k);
  for (Index b = 0; b < blocks; ++b) {
    const Index c0 = b * kQuantBlock, n = std::clamp<Index>(k - c0, 0, kQuantBlock);
    float scale;
    const std::int32_t sum = vectorised && n == kQuantBlock ? detail::quantise_block(x + c0, q + c0, scale)
                                                      : detail::quantise_block_scalar(x + c0, n, q + c0, scale);
    for (Index l = 0; l < kLanes; ++l) {
      d[b * kLanes + l] = scale;
      bias[b * kLanes + l] = l == 0 ? -off * sum : 0;
    }
  }
}

/// x [0, k) replaced by its quantised values d q (what the q8/q4 kernels multiply by), so a product
/// that goes through fp32 panels (prefill) computes the same W x Q8(x) as decode.
inline void round_trip(float* x, Index k) {
  for (Index c0 = 0; c0 < k; c0 += kQuantBlock) {
    const Index n = std::min<Index>(kQuantBlock, k - c0);
    std::int8_t q[2 * kQuantBlock];  // quantise writes a pair of blocks
    float d[2 * kLanes];
    std::int32_t bias[2 * kLanes];
    quantise(x + c0, n, 0, q, d, bias);
    for (Index i = 0; i < n; ++i) x[c0 + i] = d[0] * float(q[i]);
  }
}

namespace detail {
/// The weight scale of block b of a stored q8/q4 row.
template <WeightFormat F>
inline float scale_of(const unsigned char* row, Index b) {
  constexpr Index bytes = F == WeightFormat::q8 ? 2 + kQuantBlock : 2 + kQuantBlock / 2;
  std::uint16_t h;
  std::memcpy(&h, row + b * bytes, 2);
  return half_to_float(h);
}

/// The stored integer of weight c: q8's signed q, q4's unsigned nibble q + 8.
template <WeightFormat F>
inline int stored_q(const unsigned char* row, Index c) {
  if constexpr (F == WeightFormat::q8) return std::int8_t(row[(c / kQuantBlock) * (2 + kQuantBlock) + 2 + c % kQuantBlock]);
  const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock / 2) + 2;
  const Index i = c % kQuantBlock;
  return i < 16 ? (blk[i] & 0x0F) : (blk[i - 16] >> 4);
}
}  // namespace detail

/// acc[i][r] (summed over its lanes) += the product of activation row xs[i] with stored row
/// rows[r], over blocks [0, blocks) of the weights (blocks <= padded_blocks). Each (i, r) pair is
/// the same sequence of operations whatever XR and WR, so results do not depend on grouping.
/// Vector paths keep acc as SIMD registers; reduce() turns one into the sum. next[r] is prefetched
/// at the bytes each step reads (the rows a later call takes: a compressed row is too short for
/// the hardware prefetcher to get ahead of it).
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
using Acc = __m512;
inline float reduce(Acc a) { return _mm512_reduce_add_ps(a); }
inline Acc zero() { return _mm512_setzero_ps(); }

// Per step: two blocks (64 weights) in one register. Weights unsigned (q8: q ^ 0x80 = q + 128;
// q4: the nibbles q + 8), activations signed; vpdpbusd adds 4 products per int32 lane onto the
// activation row's bias (-offset * sum q_x in lanes 0 and 8), so each block's exact integer dot is
// spread over its 8 lanes. Those become floats (exact: |lane| <= 4 * 255 * 127) times the two scales.
template <WeightFormat F, int XR, int WR>
inline void dot(const Row* xs, const unsigned char* const* rows, const unsigned char* const* next, Index blocks, Acc (*acc)[WR]) {
  const __m512i flip = _mm512_set1_epi8(char(0x80)), low4 = _mm512_set1_epi8(0x0F);
  // q4: bytes [qa, qa, qb, qb] in the 128-bit lanes, shifted by 0, 4, 0, 4 bits: low nibbles
  // (weights 0-15) then high nibbles (16-31) of each block, the order of the activations.
  const __m512i spread = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
  constexpr Index bytes = F == WeightFormat::q8 ? 2 + kQuantBlock : 2 + kQuantBlock / 2;
  for (Index b = 0; b < blocks; b += 2) {
    const bool second = b + 1 < blocks;
#pragma GCC unroll 4
    for (int r = 0; r < WR; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(next[r] + b * bytes), _MM_HINT_T0);
      if constexpr (F == WeightFormat::q8) _mm_prefetch(reinterpret_cast<const char*>(next[r] + b * bytes + 64), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int r = 0; r < WR; ++r) {
      __m512i w;
      const float da = detail::scale_of<F>(rows[r], b), db = second ? detail::scale_of<F>(rows[r], b + 1) : 0.0f;
      if constexpr (F == WeightFormat::q8) {
        const unsigned char* pa = rows[r] + b * (2 + kQuantBlock) + 2;
        const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa));
        const __m256i hi = second ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa + 2 + kQuantBlock)) : _mm256_set1_epi8(char(0x80));
        w = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), flip);
      } else {
        const unsigned char* pa = rows[r] + b * (2 + kQuantBlock / 2) + 2;
        const __m128i qa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pa));
        const __m128i qb = second ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(pa + 2 + kQuantBlock / 2)) : _mm_setzero_si128();
        const __m512i both = _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(qa), qb, 1));
        w = _mm512_and_si512(_mm512_srlv_epi64(_mm512_permutexvar_epi64(spread, both), shifts), low4);
      }
      const __m512 dw = _mm512_insertf32x8(_mm512_set1_ps(da), _mm256_set1_ps(db), 1);
#pragma GCC unroll 4
      for (int i = 0; i < XR; ++i) {
        const __m512i xq = _mm512_loadu_si512(xs[i].q + b * kQuantBlock);
        const __m512i sum = _mm512_dpbusd_epi32(_mm512_loadu_si512(xs[i].bias + b * kLanes), w, xq);
        const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(xs[i].d + b * kLanes), dw);
        acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[i][r]);
      }
    }
  }
}
#elif defined(__AVX2__)
using Acc = __m256;
inline float reduce(Acc a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Acc zero() { return _mm256_setzero_ps(); }

// Per step: one block (32 weights) in one register. vpmaddubsw multiplies unsigned by signed bytes
// and adds pairs into int16 (saturating), vpmaddwd(., 1) adds pairs of those into int32. q8 takes
// |q_w| against sign(q_w) q_x (at most 2 * 128 * 127 per int16: no saturation; q + 128 would
// saturate); q4 its nibbles q + 8 (at most 2 * 15 * 127) with the bias -8 sum q_x in lane 0.
template <WeightFormat F, int XR, int WR>
inline void dot(const Row* xs, const unsigned char* const* rows, const unsigned char* const* next, Index blocks, Acc (*acc)[WR]) {
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
  constexpr Index bytes = F == WeightFormat::q8 ? 2 + kQuantBlock : 2 + kQuantBlock / 2;
  for (Index b = 0; b < blocks; ++b) {
#pragma GCC unroll 4
    for (int r = 0; r < WR; ++r) _mm_prefetch(reinterpret_cast<const char*>(next[r] + b * bytes), _MM_HINT_T0);
#pragma GCC unroll 4
    for (int r = 0; r < WR; ++r) {
      const float dw = detail::scale_of<F>(rows[r], b);
      __m256i w;
      if constexpr (F == WeightFormat::q8) {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + b * (2 + kQuantBlock) + 2));
      } else {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r] + b * (2 + kQuantBlock / 2) + 2));
        w = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1), low4);
      }
      const __m256i wu = F == WeightFormat::q8 ? _mm256_sign_epi8(w, w) : w;
#pragma GCC unroll 4
      for (int i = 0; i < XR; ++i) {
        __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs[i].q + b * kQuantBlock));
        if constexpr (F == WeightFormat::q8) xq = _mm256_sign_epi8(xq, w);
        __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xq), ones);
        if constexpr (F == WeightFormat::q4) sum = _mm256_add_epi32(sum, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs[i].bias + b * kLanes)));
        acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(xs[i].d[b * kLanes] * dw), acc[i][r]);
      }
    }
  }
}
#else
using Acc = float;
inline float reduce(Acc a) { return a; }
inline Acc zero() { return 0.0f; }

// The obvious kernel: each block's integer dot, scaled by both scales, summed in order.
template <WeightFormat F, int XR, int WR>
inline void dot(const Row* xs, const unsigned char* const* rows, const unsigned char* const* next, Index blocks, Acc (*acc)[WR]) {
  for (Index b = 0; b < blocks; ++b)
    for (int r = 0; r < WR; ++r) {
      const float dw = detail::scale_of<F>(rows[r], b);
      for (int i = 0; i < XR; ++i) {
        std::int32_t sum = xs[i].bias[b * kLanes];  // -offset * sum q_x: q4's nibbles carry + 8
        for (Index c = 0; c < kQuantBlock; ++c) sum += detail::stored_q<F>(rows[r], b * kQuantBlock + c) * xs[i].q[b * kQuantBlock + c];
        acc[i][r] += float(sum) * (xs[i].d[b * kLanes] * dw);
      }
    }
}
#endif

}  // namespace act_quant

ENGRAM_NAMESPACE_END
