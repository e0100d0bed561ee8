// The closed-form backward of TTT's inner loss: d/dz of 1/2 || LN_{gamma,beta}(z) - target ||^2.
#pragma once

#include <cmath>

#include "engram/core/ops.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// Row by row (ttt.md 1.3): with mu = mean(z), sigma = sqrt(var(z) + eps) (biased variance),
/// zhat = (z - mu) / sigma and ghat = gamma * (gamma * zhat + beta - target),
///   grad = (ghat - mean(ghat) - zhat * mean(ghat * zhat)) / sigma.
/// z, target, grad: [m, n]; gamma, beta: [n]. grad may alias z.
template <class T>
void ln_l2_grad(ConstView<T> z, ConstView<T> target, const T* gamma, const T* beta, T eps, View<T> grad) {
  check(z.rows() == target.rows() && z.cols() == target.cols() && z.rows() == grad.rows() && z.cols() == grad.cols(),
        "ttt::ln_l2_grad", "shapes differ: z [", z.rows(), ", ", z.cols(), "], target [", target.rows(), ", ",
        target.cols(), "], grad [", grad.rows(), ", ", grad.cols(), "]");
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const Index n = z.cols();
  if (n == 0) return;
  const T inv_n = T(1) / T(n);
  for (Index r = 0; r < z.rows(); ++r) {
    const T* zr = z.row(r);
    const T* y = target.row(r);
    T* g = grad.row(r);
    // Pass 1: mean and biased variance (z is fully read before grad is written: grad may alias z).
    const auto [mean, rstd] = mean_rstd(zr, n, eps);
    const B mb(mean);
    Index i = 0;
    // Pass 2: zhat (kept in grad) and the two sums of ghat = gamma (gamma zhat + beta - y).
    const B rb(rstd);
    B sum_gh(T(0)), sum_ghz(T(0));
    for (i = 0; i + W <= n; i += W) {
      const B zh = (simd::load(zr + i) - mb) * rb;
      simd::store(g + i, zh);
      const B ga = simd::load(gamma + i);
      const B gh = ga * (xsimd::fma(ga, zh, simd::load(beta + i)) - simd::load(y + i));
      sum_gh += gh;
      sum_ghz = xsimd::fma(gh, zh, sum_ghz);
    }
    T sgh = simd::reduce_add(sum_gh), sghz = simd::reduce_add(sum_ghz);
    for (; i < n; ++i) {
      const T zh = (zr[i] - mean) * rstd;
      g[i] = zh;
      const T gh = gamma[i] * (gamma[i] * zh + beta[i] - y[i]);
      sgh += gh;
      sghz += gh * zh;
    }
    // Pass 3: grad = (ghat - mean(ghat) - zhat mean(ghat zhat)) / sigma, ghat recomputed (cheaper
    // than a buffer).
    const T mean_gh = sgh * inv_n, mean_ghz = sghz * inv_n;
    const B mgh(mean_gh), mghz(mean_ghz);
    for (i = 0; i + W <= n; i += W) {
      const B zh = simd::load(g + i);
      const B ga = simd::load(gamma + i);
      const B gh = ga * (xsimd::fma(ga, zh, simd::load(beta + i)) - simd::load(y + i));
      simd::store(g + i, (gh - mgh - zh * mghz) * rb);
    }
    for (; i < n; ++i) {
      const T gh = gamma[i] * (gamma[i] * g[i] + beta[i] - y[i]);
      g[i] = (gh - mean_gh - g[i] * mean_ghz) * rstd;
    }
  }
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
