// The xsimd layer: batch aliases, the reduce/exp shims xsimd 8.1 lacks, and vector kernels.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "engram/core/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace simd {

/// SIMD register of T for the instruction set chosen by the consumer's compiler flags.
template <class T>
using batch = xsimd::batch<T>;
template <class T>
using batch_bool = xsimd::batch_bool<T>;

/// Lanes per register: 16 floats with AVX-512, 8 with AVX2.
template <class T>
inline constexpr Index width = Index(batch<T>::size);

/// Independent accumulators in the long-vector kernels. FMA latency is about 4 cycles and two FMA
/// ports issue per cycle, so 8 chains keep both ports busy (4 chains measured at ~50% of peak).
inline constexpr int kAccumulators = 8;

/// Architectural vector registers: 32 with AVX-512 (zmm0-31), 16 with AVX/AVX2 (ymm0-15) and SSE
/// on x86-64, 32 on AArch64. Register-tiled kernels size their accumulators from it: more live
/// values than registers spill to the stack, and every spilled accumulator costs a load and a store
/// per FMA.
#if defined(__AVX512F__) || defined(__aarch64__)
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif

/// a * b + c as one fused instruction. xsimd 8.1's fma on the AVX-512 arches is the generic
/// a * b + c, which fuses only under -ffp-contract=fast; the compute-bound kernels (GEMM, the FMA
/// peak probe) must not depend on the consumer's contraction flags.
template <class T>
batch<T> fmadd(const batch<T>& a, const batch<T>& b, const batch<T>& c) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && batch<T>::size == 16) return batch<T>(_mm512_fmadd_ps(a, b, c));
  else if constexpr (std::is_same_v<T, double> && batch<T>::size == 8) return batch<T>(_mm512_fmadd_pd(a, b, c));
  else return xsimd::fma(a, b, c);
#else
  return xsimd::fma(a, b, c);
#endif
}

template <class T>
batch<T> load(const T* p) {
  return batch<T>::load_unaligned(p);
}
template <class T>
void store(T* p, const batch<T>& b) {
  b.store_unaligned(p);
}

/// Horizontal sum (xsimd 8.1 spells it hadd; reduce_add arrived in 9.0).
template <class T>
T reduce_add(const batch<T>& b) {
  return xsimd::hadd(b);
}

/// Horizontal maximum (xsimd 8.1 has no reduce_max).
template <class T>
T reduce_max(const batch<T>& b) {
  alignas(64) std::array<T, batch<T>::size> lanes;
  b.store_aligned(lanes.data());
  return *std::max_element(lanes.begin(), lanes.end());
}

/// exp with xsimd's polynomial (max relative error ~1e-7 in float); exp(-inf) = 0.
///
/// In float on AVX-512, the same range reduction and polynomial as xsimd::exp (so the same
/// results wherever exp(x) is a normal float), but 2^k applied by one scalef instead of
/// xsimd's integer ldexp and its two compare-and-select fix-ups for overflow and underflow: the
/// input is clamped to [-104, 89] first (exp(-104) rounds to 0, exp(89) overflows to inf; NaN passes
/// through both clamps), and scalef rounds the few denormal results (x below -87.3) correctly
/// where xsimd returns 0. Six fewer instructions of about twenty: the softmax of a narrow head
/// (the NAMM scorer's 32) spends a fifth of its time in exp.
template <class T>
batch<T> exp(const batch<T>& x) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && batch<T>::size == 16) {
    using F = batch<float>;
    // max(lo, x) and min(hi, x) return their second operand when one is NaN: NaN stays NaN.
    const F a(_mm512_min_ps(_mm512_set1_ps(89.f), _mm512_max_ps(_mm512_set1_ps(-104.f), x)));
    // xsimd's exp_reduction<float, exp_tag>, operation for operation.
    const F k = xsimd::nearbyint(xsimd::constants::invlog_2<F>() * a);
    F r = xsimd::fnma(k, xsimd::constants::log_2hi<F>(), a);
    r = xsimd::fnma(k, xsimd::constants::log_2lo<F>(), r);
    F y = xsimd::fma(r, F(1.3997796e-03f), F(8.3955629e-03f));
    y = xsimd::fma(r, y, F(4.1665401e-02f));
    y = xsimd::fma(r, y, F(1.6666277e-01f));
    y = xsimd::fma(r, y, F(5.0000000e-01f));
    const F p = xsimd::fma(y, r * r, r) + F(1.f);
    return F(_mm512_scalef_ps(p, k));
  }
#endif
  return xsimd::exp(x);
}

/// Mask with the first n lanes set (0 <= n <= width).
template <class T>
batch_bool<T> first_lanes(Index n) {
  alignas(64) std::array<T, batch<T>::size> iota;
  for (std::size_t i = 0; i < iota.size(); ++i) iota[i] = T(i);
  return batch<T>::load_aligned(iota.data()) < batch<T>(T(n));
}

/// sum_i a[i] * b[i] over n elements.
template <class T>
T dot(const T* a, const T* b, Index n) {
  constexpr Index W = width<T>;
  Index i = 0;
  T result = 0;
  if (n >= kAccumulators * W) {
    batch<T> acc[kAccumulators];
    for (auto& x : acc) x = batch<T>(T(0));
    for (; i + kAccumulators * W <= n; i += kAccumulators * W)
      for (int k = 0; k < kAccumulators; ++k) acc[k] = xsimd::fma(load(a + i + k * W), load(b + i + k * W), acc[k]);
    for (int k = 1; k < kAccumulators; ++k) acc[0] += acc[k];
    result = reduce_add(acc[0]);
  }
  if (i + W <= n) {
    batch<T> acc(T(0));
    for (; i + W <= n; i += W) acc = xsimd::fma(load(a + i), load(b + i), acc);
    result += reduce_add(acc);
  }
  for (; i < n; ++i) result += a[i] * b[i];
  return result;
}

/// sum_i a[i].
template <class T>
T sum(const T* a, Index n) {
  constexpr Index W = width<T>;
  Index i = 0;
  batch<T> acc[4] = {batch<T>(T(0)), batch<T>(T(0)), batch<T>(T(0)), batch<T>(T(0))};
  for (; i + 4 * W <= n; i += 4 * W)
    for (int k = 0; k < 4; ++k) acc[k] += load(a + i + k * W);
  for (; i + W <= n; i += W) acc[0] += load(a + i);
  T result = reduce_add((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; i < n; ++i) result += a[i];
  return result;
}

/// max_i a[i]; -inf for n == 0.
template <class T>
T max(const T* a, Index n) {
  constexpr Index W = width<T>;
  Index i = 0;
  T result = -std::numeric_limits<T>::infinity();
  if (n >= W) {
    batch<T> acc = load(a);
    for (i = W; i + W <= n; i += W) acc = xsimd::max(acc, load(a + i));
    result = reduce_max(acc);
  }
  for (; i < n; ++i) result = std::max(result, a[i]);
  return result;
}

/// y[i] += alpha * x[i].
template <class T>
void axpy(T alpha, const T* x, T* y, Index n) {
  constexpr Index W = width<T>;
  const batch<T> a(alpha);
  Index i = 0;
  for (; i + W <= n; i += W) store(y + i, xsimd::fma(a, load(x + i), load(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

/// x[i] *= alpha.
template <class T>
void scale(T alpha, T* x, Index n) {
  constexpr Index W = width<T>;
  const batch<T> a(alpha);
  Index i = 0;
  for (; i + W <= n; i += W) store(x + i, load(x + i) * a);
  for (; i < n; ++i) x[i] *= alpha;
}

/// out[i] = a[i] + b[i] (out may alias a or b).
template <class T>
void add(const T* a, const T* b, T* out, Index n) {
  constexpr Index W = width<T>;
  Index i = 0;
  for (; i + W <= n; i += W) store(out + i, load(a + i) + load(b + i));
  for (; i < n; ++i) out[i] = a[i] + b[i];
}

/// out[i] = a[i] * b[i] (out may alias a or b).
template <class T>
void mul(const T* a, const T* b, T* out, Index n) {
  constexpr Index W = width<T>;
  Index i = 0;
  for (; i + W <= n; i += W) store(out + i, load(a + i) * load(b + i));
  for (; i < n; ++i) out[i] = a[i] * b[i];
}

/// Applies a batch functor elementwise: out[i] = f(in[i]), with a scalar functor for the tail.
/// `f` must be callable with batch<T> and with T (a generic lambda serves both).
template <class T, class F>
void map(const T* in, T* out, Index n, F&& f) {
  constexpr Index W = width<T>;
  Index i = 0;
  for (; i + W <= n; i += W) store(out + i, f(load(in + i)));
  if (i < n) {
    // Tail through a zero-padded register so the scalar and vector paths round identically.
    alignas(64) std::array<T, batch<T>::size> buf{};
    std::copy(in + i, in + n, buf.begin());
    batch<T> r = f(batch<T>::load_aligned(buf.data()));
    r.store_aligned(buf.data());
    std::copy(buf.begin(), buf.begin() + (n - i), out + i);
  }
}

}  // namespace simd
ENGRAM_NAMESPACE_END
