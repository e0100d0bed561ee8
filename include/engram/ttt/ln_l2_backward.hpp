// The second-order piece of TTT's outer backward: the vector-Jacobian product of the closed-form
// inner gradient ln_l2_grad (ttt.md 1.3) with respect to z, the target, gamma and beta.
#pragma once

#include <type_traits>

#include "engram/core/ops.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// Backward of g = ln_l2_grad(z, y; gamma, beta) row by row, given u = dL/dg.
///
/// Per row (n features): zhat = (z - mu) / sigma, r = gamma zhat + beta - y, ghat = gamma r and
/// g = J ghat with J = dzhat/dz = (I - 11^T/n - zhat zhat^T/n) / sigma (symmetric). So
/// <u, g> = <J u, ghat>: with w = J u,
///   dL/dgamma += w (r + gamma zhat),  dL/dbeta += w gamma,  dL/dy = -w gamma,
/// and through zhat in r: J (gamma^2 w). J itself depends on z: writing
/// <u, g> = (<u, ghat - mean ghat> - <u, zhat> <ghat, zhat> / n) / sigma with ghat held fixed,
/// d/dzhat = -(b u + c ghat) / sigma (b = mean(ghat zhat), c = mean(u zhat)) and
/// d/dsigma = -<u, g> / sigma, where dzhat/dz = J and dsigma/dz = zhat / n. Altogether
///   dL/dz = J (gamma^2 w - (b u + c ghat) / sigma) - <u, g> zhat / (n sigma).
/// z, y, dg, dz, dy: [m, n]; gamma, beta, dgamma, dbeta: [n] (dgamma, dbeta accumulate). dz and dy
/// are overwritten and must not alias the inputs.
template <class T>
void ln_l2_grad_backward(ConstView<T> z, ConstView<T> y, const T* gamma, const T* beta, T eps, ConstView<T> dg, View<T> dz,
                         View<T> dy, T* dgamma, T* dbeta) {
  const Index m = z.rows(), n = z.cols();
  check(y.rows() == m && y.cols() == n && dg.rows() == m && dg.cols() == n && dz.rows() == m && dz.cols() == n &&
            dy.rows() == m && dy.cols() == n,
        "ttt::ln_l2_grad_backward", "shapes differ: z [", m, ", ", n, "], target [", y.rows(), ", ", y.cols(), "], dgrad [",
        dg.rows(), ", ", dg.cols(), "], dz [", dz.rows(), ", ", dz.cols(), "], dtarget [", dy.rows(), ", ", dy.cols(), "]");
  if (n == 0) return;
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const T inv_n = T(1) / T(n);
  for (Index r = 0; r < m; ++r) {
    const T* zr = z.row(r);
    const T* yr = y.row(r);
    const T* u = dg.row(r);
    T* dzr = dz.row(r);
    T* dyr = dy.row(r);
    const auto stats = mean_rstd(zr, n, eps);  // no structured binding: the lambda below captures these (clang < 16)
    const T mean = stats.first, rstd = stats.second;
    const B mb(mean), rb(rstd);
    // zhat, the residual r = gamma zhat + beta - y and ghat = gamma r of element i.
    auto terms = [&](Index i, auto& zh, auto& res) {
      using V = std::decay_t<decltype(zh)>;
      if constexpr (std::is_same_v<V, T>) {
        zh = (zr[i] - mean) * rstd;
        res = gamma[i] * zh + beta[i] - yr[i];
      } else {
        zh = (simd::load(zr + i) - mb) * rb;
        res = xsimd::fma(simd::load(gamma + i), zh, simd::load(beta + i)) - simd::load(yr + i);
      }
    };
    // Pass 1: the means b = mean(ghat zhat), a = mean(ghat), c = mean(u zhat), mean(u).
    B s_gh(T(0)), s_ghz(T(0)), s_u(T(0)), s_uz(T(0));
    Index i = 0;
    for (; i + W <= n; i += W) {
      B zh, res;
      terms(i, zh, res);
      const B gh = simd::load(gamma + i) * res, uu = simd::load(u + i);
      s_gh += gh, s_ghz = xsimd::fma(gh, zh, s_ghz), s_u += uu, s_uz = xsimd::fma(uu, zh, s_uz);
    }
    T sum_gh = simd::reduce_add(s_gh), sum_ghz = simd::reduce_add(s_ghz), sum_u = simd::reduce_add(s_u), sum_uz = simd::reduce_add(s_uz);
    for (; i < n; ++i) {
      T zh, res;
      terms(i, zh, res);
      const T gh = gamma[i] * res;
      sum_gh += gh, sum_ghz += gh * zh, sum_u += u[i], sum_uz += u[i] * zh;
    }
    const T a = sum_gh * inv_n, b = sum_ghz * inv_n, mu_u = sum_u * inv_n, c = sum_uz * inv_n;
    // Pass 2: w = J u, the parameter and target adjoints, <u, g>, and v = gamma^2 w - (b u + c ghat) / sigma
    // (kept in dz) with its two means.
    const B ab(a), bb(b), mub(mu_u), cb(c);
    B s_ug(T(0)), s_v(T(0)), s_vz(T(0));
    for (i = 0; i + W <= n; i += W) {
      B zh, res;
      terms(i, zh, res);
      const B ga = simd::load(gamma + i), gh = ga * res, uu = simd::load(u + i);
      const B w = (uu - mub - zh * cb) * rb;
      simd::store(dgamma + i, xsimd::fma(w, res + ga * zh, simd::load(dgamma + i)));
      simd::store(dbeta + i, xsimd::fma(w, ga, simd::load(dbeta + i)));
      simd::store(dyr + i, -(w * ga));
      s_ug = xsimd::fma(uu, (gh - ab - zh * bb) * rb, s_ug);
      const B v = ga * ga * w - (bb * uu + cb * gh) * rb;
      simd::store(dzr + i, v);
      s_v += v, s_vz = xsimd::fma(v, zh, s_vz);
    }
    T ug = simd::reduce_add(s_ug), sum_v = simd::reduce_add(s_v), sum_vz = simd::reduce_add(s_vz);
    for (; i < n; ++i) {
      T zh, res;
      terms(i, zh, res);
      const T gh = gamma[i] * res;
      const T w = (u[i] - mu_u - zh * c) * rstd;
      dgamma[i] += w * (res + gamma[i] * zh);
      dbeta[i] += w * gamma[i];
      dyr[i] = -w * gamma[i];
      ug += u[i] * (gh - a - zh * b) * rstd;
      const T v = gamma[i] * gamma[i] * w - (b * u[i] + c * gh) * rstd;
      dzr[i] = v;
      sum_v += v, sum_vz += v * zh;
    }
    // Pass 3: dz = J v - <u, g> zhat / (n sigma).
    const T mean_v = sum_v * inv_n, k = sum_vz * inv_n + ug * inv_n;
    const B mvb(mean_v), kb(k);
    for (i = 0; i + W <= n; i += W) {
      const B zh = (simd::load(zr + i) - mb) * rb;
      simd::store(dzr + i, (simd::load(dzr + i) - mvb - zh * kb) * rb);
    }
    for (; i < n; ++i) {
      const T zh = (zr[i] - mean) * rstd;
      dzr[i] = (dzr[i] - mean_v - zh * k) * rstd;
    }
  }
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
