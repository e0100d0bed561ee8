// ARMT's associative memory of one layer (rmt.md 6; official AssociativeLayerWrapper): the DPFP
// feature map, the read h += phi(h W_mq^T) A / (phi(.) z + eps) and the delta-rule write from the
// memory-token outputs with the gamma correction of z; forward and backward of both, for a batch
// of sequences each with its own state (A, z).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"
#include "engram/nn/layer.hpp"
#include "engram/nn/linear.hpp"
#include "engram/nn/tape.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// eps of the official code: added to every denominator phi . z (and to gamma's numerator).
inline constexpr double kAssociativeEps = 1e-5;
/// F.normalize's floor of the feature norm.
inline constexpr double kNormalizeEps = 1e-12;

/// phi [n, 2 nu D] = DPFP_nu(u [n, D]) / ||DPFP_nu(u)||: r = [relu(u), relu(-u)] (2D), block j =
/// 1..nu is r * roll(r, j) with roll(r, j)[i] = r[(i - j) mod 2D] (torch.roll), then each row is
/// L2-normalised (F.normalize, as the official associate/update_mem do; rmt.md 6 omits it).
template <class T>
void dpfp(ConstView<T> u, Index nu, View<T> phi) {
  const Index D = u.cols(), R = 2 * D;
  check_shape(phi, u.rows(), nu * R, "rmt::dpfp", "features");
  std::vector<T> r(static_cast<std::size_t>(R));
  for (Index t = 0; t < u.rows(); ++t) {
    for (Index i = 0; i < D; ++i) r[std::size_t(i)] = std::max(u(t, i), T(0)), r[std::size_t(D + i)] = std::max(-u(t, i), T(0));
    T* p = phi.row(t);
    double sq = 0;
    for (Index j = 1; j <= nu; ++j)
      for (Index i = 0; i < R; ++i) {
        const T v = r[std::size_t(i)] * r[std::size_t((i - j + R * nu) % R)];
        p[(j - 1) * R + i] = v;
        sq += double(v) * double(v);
      }
    const T inv = T(1.0 / std::max(std::sqrt(sq), kNormalizeEps));
    for (Index i = 0; i < nu * R; ++i) p[i] *= inv;
  }
}

/// du [n, D] = d(dpfp)/du^T dphi (overwritten), recomputing the features from u.
template <class T>
void dpfp_backward(ConstView<T> u, Index nu, ConstView<T> dphi, View<T> du) {
  const Index D = u.cols(), R = 2 * D, K = nu * R;
  std::vector<T> r(static_cast<std::size_t>(R)), p(static_cast<std::size_t>(K)), dp(static_cast<std::size_t>(K)), dr(static_cast<std::size_t>(R));
  for (Index t = 0; t < u.rows(); ++t) {
    for (Index i = 0; i < D; ++i) r[std::size_t(i)] = std::max(u(t, i), T(0)), r[std::size_t(D + i)] = std::max(-u(t, i), T(0));
    double sq = 0;
    for (Index j = 1; j <= nu; ++j)
      for (Index i = 0; i < R; ++i) {
        const T v = r[std::size_t(i)] * r[std::size_t((i - j + R * nu) % R)];
        p[std::size_t((j - 1) * R + i)] = v;
        sq += double(v) * double(v);
      }
    const double norm = std::sqrt(sq);
    const T* g = dphi.row(t);
    if (norm > kNormalizeEps) {
      // n = p / |p|: dp = (g - n <n, g>) / |p|.
      double ng = 0;
      for (Index k = 0; k < K; ++k) ng += double(p[std::size_t(k)]) * double(g[k]);
      ng /= norm;
      for (Index k = 0; k < K; ++k) dp[std::size_t(k)] = T((double(g[k]) - double(p[std::size_t(k)]) / norm * ng) / norm);
    } else {
      for (Index k = 0; k < K; ++k) dp[std::size_t(k)] = T(double(g[k]) / kNormalizeEps);
    }
    std::fill(dr.begin(), dr.end(), T(0));
    for (Index j = 1; j <= nu; ++j)
      for (Index i = 0; i < R; ++i) {
        const Index i2 = (i - j + R * nu) % R;
        const T d = dp[std::size_t((j - 1) * R + i)];
        dr[std::size_t(i)] += d * r[std::size_t(i2)];
        dr[std::size_t(i2)] += d * r[std::size_t(i)];
      }
    // relu'(0) = 0, as torch.
    for (Index i = 0; i < D; ++i)
      du(t, i) = (u(t, i) > T(0) ? dr[std::size_t(i)] : T(0)) - (u(t, i) < T(0) ? dr[std::size_t(D + i)] : T(0));
  }
}

/// The associative memory of one layer: its projections. The state it reads and writes belongs to
/// a sequence: A [d_key, d] and z [1, d_key] (a batch of B sequences stacks them: A [B d_key, d],
/// z [B, d_key]).
template <class T>
struct AssociativeMemory {
  Linear<T> wq;  ///< W_mq [d_mem, d], no bias
  Linear<T> wk;  ///< W_mk [d_mem, d], no bias
  Linear<T> wv;  ///< W_mv [d, d], no bias (zero-initialised officially)
  Linear<T> wb;  ///< W_mb [1, d] with bias [1]: the write strength beta = sigmoid(m w_b + b)
  Index nu = 3;

  AssociativeMemory() = default;
  AssociativeMemory(Index d, Index d_mem, Index nu_) : wq(d, d_mem, false), wk(d, d_mem, false), wv(d, d, false), wb(d, 1, true), nu(nu_) {}

  Index d_model() const { return wv.in(); }
  Index d_mem() const { return wq.out(); }
  Index d_key() const { return 2 * nu * d_mem(); }

  void visit_parameters(const std::string& prefix, const std::function<void(const std::string&, Tensor<T>&)>& f) {
    visit_linear<T>(prefix + ".W_mq", wq, f);
    visit_linear<T>(prefix + ".W_mk", wk, f);
    visit_linear<T>(prefix + ".W_mv", wv, f);
    visit_linear<T>(prefix + ".W_mb", wb, f);
  }

  /// What a read keeps for its backward (rows of one or many sequences).
  struct ReadSaved {
    View<T> h;     ///< [n, d] input rows
    View<T> q;     ///< [n, d_mem] pre-feature queries h W_mq^T
    View<T> out;   ///< [n, d] what was added: phi(q) A / den
    View<T> den;   ///< [n, 1] phi(q) . z + eps
  };

  /// h [n, d] += phi(h W_mq^T) A / (phi(h W_mq^T) . z + eps) for one sequence's rows (A [d_key, d],
  /// z [1, d_key]); `sv` receives the inputs of the backward (its views must be [n, *]).
  void read(View<T> h, ConstView<T> A, ConstView<T> z, const ReadSaved& sv, View<T> phi, FlopCounter* flops = nullptr) const {
    const Index n = h.rows(), d = h.cols(), K = d_key();
    copy<T>(h, sv.h);
    wq.forward(h, sv.q, flops, FlopCategory::other);
    dpfp<T>(sv.q, nu, phi);
    matmul<T>(phi, A, sv.out);  // [n, K] x [K, d]
    for (Index t = 0; t < n; ++t) {
      const T den = simd::dot(phi.row(t), z.row(0), K) + T(kAssociativeEps);
      sv.den(t, 0) = den;
      const T inv = T(1) / den;
      T* o = sv.out.row(t);
      for (Index c = 0; c < d; ++c) o[c] *= inv;
      simd::add(h.row(t), o, h.row(t), d);
    }
    if (flops) flops->add(FlopCategory::other, flops::gemm(n, d, K) + 2.0 * double(n * K));
  }

  /// Backward of read(): dh [n, d] holds dL/d(h after) on entry and dL/d(h before) on exit;
  /// dA [d_key, d] and dz [1, d_key] are ADDED the gradients of the state; W_mq's gradient added.
  void read_backward(View<T> dh, ConstView<T> A, ConstView<T> z, const ReadSaved& sv, View<T> dA, View<T> dz, Gradients<T>* grads,
                     View<T> phi, View<T> dphi, View<T> dq, FlopCounter* flops = nullptr) const {
    const Index n = dh.rows(), d = dh.cols(), K = d_key();
    dpfp<T>(sv.q, nu, phi);
    // dnum = dout / den (dout = dh), dden = -<dout, out> / den.
    Tensor<T> dnum({n, d});
    std::vector<T> dden(static_cast<std::size_t>(n));
    for (Index t = 0; t < n; ++t) {
      const T den = sv.den(t, 0);
      dden[std::size_t(t)] = -simd::dot(dh.row(t), sv.out.row(t), d) / den;
      const T inv = T(1) / den;
      for (Index c = 0; c < d; ++c) dnum(t, c) = dh(t, c) * inv;
    }
    gemm<T>(dnum.view(), Trans::no, A, Trans::yes, dphi);  // dphi = dnum A^T [n, K]
    for (Index t = 0; t < n; ++t) simd::axpy(dden[std::size_t(t)], z.row(0), dphi.row(t), K);
    gemm<T>(phi, Trans::yes, dnum.view(), Trans::no, dA, T(1), T(1));  // dA += phi^T dnum
    for (Index t = 0; t < n; ++t) simd::axpy(dden[std::size_t(t)], phi.row(t), dz.row(0), K);
    dpfp_backward<T>(sv.q, nu, dphi, dq);
    wq.backward(sv.h, dq, dh, grads, /*accumulate=*/true, flops, FlopCategory::other);
    if (flops) flops->add(FlopCategory::other, 2 * flops::gemm(n, d, K));
  }

  /// What a write keeps for its backward.
  struct WriteSaved {
    View<T> m;      ///< [m, d] memory-token outputs of the layer
    View<T> k;      ///< [m, d_mem] pre-feature keys
    View<T> u;      ///< [m, d] v - prev (the delta)
    View<T> prev;   ///< [m, d] what A already returned for the keys (0 in the first segment)
    View<T> den;    ///< [m, 1] mk . z + eps
    View<T> beta;   ///< [m, 1]
    View<T> gamma;  ///< [m, 1] (detached)
  };

  /// The delta-rule write of one sequence's memory rows mem [m, d] into A [d_key, d], z [1, d_key]
  /// (updated in place when A_out/z_out alias them, or written to A_out/z_out): mk = phi(mem W_mk^T),
  /// v = mem W_mv^T, beta = sigmoid(mem w_b + b); prev = mk A / (mk . z + eps) and gamma = clip(1 -
  /// (mk . z + eps) / |mk|^2, 0, 1) (detached), or 0 and 1 in the first segment; A += mk^T diag(beta)
  /// (v - prev), z += sum gamma mk.
  void write(ConstView<T> mem, ConstView<T> A, ConstView<T> z, View<T> A_out, View<T> z_out, bool first, const WriteSaved& sv,
             View<T> mk, FlopCounter* flops = nullptr) const {
    const Index m = mem.rows(), d = mem.cols(), K = d_key();
    copy<T>(mem, sv.m);
    wk.forward(mem, sv.k, flops, FlopCategory::other);
    dpfp<T>(sv.k, nu, mk);
    wv.forward(mem, sv.u, flops, FlopCategory::other);  // v, then v - prev
    wb.forward(mem, sv.beta, flops, FlopCategory::other);
    for (Index i = 0; i < m; ++i) sv.beta(i, 0) = T(1) / (T(1) + std::exp(-sv.beta(i, 0)));
    if (first) {
      for (Index i = 0; i < m; ++i) std::fill_n(sv.prev.row(i), d, T(0)), sv.den(i, 0) = T(1), sv.gamma(i, 0) = T(1);
    } else {
      matmul<T>(mk, A, sv.prev);
      for (Index i = 0; i < m; ++i) {
        const T den = simd::dot(mk.row(i), z.row(0), K) + T(kAssociativeEps);
        const T sq = simd::dot(mk.row(i), mk.row(i), K);
        sv.den(i, 0) = den;
        // |mk|^2 = 0 (all-zero key): 1 - den / 0 = -inf, clipped to 0 as in torch.
        sv.gamma(i, 0) = sq > T(0) ? std::clamp(T(1) - den / sq, T(0), T(1)) : T(0);
        const T inv = T(1) / den;
        for (Index c = 0; c < d; ++c) sv.prev(i, c) *= inv;
      }
    }
    for (Index i = 0; i < m; ++i)
      for (Index c = 0; c < d; ++c) sv.u(i, c) -= sv.prev(i, c);
    if (A_out.data() != A.data()) copy<T>(A, A_out);
    if (z_out.data() != z.data()) copy<T>(z, z_out);
    // A += mk^T (beta * u): scale the rows of u by beta in a temporary.
    Tensor<T> bu({m, d});
    for (Index i = 0; i < m; ++i)
      for (Index c = 0; c < d; ++c) bu(i, c) = sv.beta(i, 0) * sv.u(i, c);
    gemm<T>(mk, Trans::yes, bu.view(), Trans::no, A_out, T(1), T(1));
    for (Index i = 0; i < m; ++i) simd::axpy(sv.gamma(i, 0), mk.row(i), z_out.row(0), K);
    if (flops) flops->add(FlopCategory::other, (first ? 1 : 2) * flops::gemm(m, d, K));
  }

  /// Backward of write(): given dA_out, dz_out (gradients of the state after the write), adds the
  /// state gradients before it into dA_in, dz_in (which must not alias dA_out, dz_out; the direct
  /// path dA_in += dA_out is included), adds dL/dmem into dmem [m, d], and the weights' gradients.
  void write_backward(ConstView<T> A, ConstView<T> z, ConstView<T> dA_out, ConstView<T> dz_out, View<T> dA_in, View<T> dz_in, View<T> dmem,
                      bool first, const WriteSaved& sv, Gradients<T>* grads, View<T> mk, View<T> dmk, View<T> dk, FlopCounter* flops = nullptr) const {
    const Index m = sv.m.rows(), d = sv.m.cols(), K = d_key();
    dpfp<T>(sv.k, nu, mk);
    for (Index r = 0; r < K; ++r) simd::add(dA_in.row(r), dA_out.row(r), dA_in.row(r), d);
    simd::add(dz_in.row(0), dz_out.row(0), dz_in.row(0), K);
    // G = mk dA_out [m, d]: dU_i = beta_i G_i, dbeta_i = <G_i, U_i>; dmk = diag(beta) U dA_out^T + gamma dz_out.
    Tensor<T> G({m, d}), du({m, d}), dbl({m, 1}), bu({m, d});
    matmul<T>(mk, dA_out, G.view());
    for (Index i = 0; i < m; ++i) {
      const T beta = sv.beta(i, 0);
      const T dbeta = simd::dot(G.row(i), sv.u.row(i), d);
      dbl(i, 0) = dbeta * beta * (T(1) - beta);
      for (Index c = 0; c < d; ++c) du(i, c) = beta * G(i, c), bu(i, c) = beta * sv.u(i, c);
    }
    gemm<T>(bu.view(), Trans::no, dA_out, Trans::yes, dmk);  // [m, d] x [d, K]
    for (Index i = 0; i < m; ++i) simd::axpy(sv.gamma(i, 0), dz_out.row(0), dmk.row(i), K);
    if (!first) {
      // prev = mk A / den, dprev = -dU: P = dprev / den; dmk += P A^T; dA_in += mk^T P;
      // dden = -<dprev, prev> / den; dmk += dden z; dz_in += dden mk.
      Tensor<T> P({m, d});
      for (Index i = 0; i < m; ++i) {
        const T den = sv.den(i, 0);
        const T dden = simd::dot(du.row(i), sv.prev.row(i), d) / den;  // -<dprev, prev>/den with dprev = -du
        for (Index c = 0; c < d; ++c) P(i, c) = -du(i, c) / den;
        simd::axpy(dden, z.row(0), dmk.row(i), K);
        simd::axpy(dden, mk.row(i), dz_in.row(0), K);
      }
      gemm<T>(P.view(), Trans::no, A, Trans::yes, dmk, T(1), T(1));
      gemm<T>(mk, Trans::yes, P.view(), Trans::no, dA_in, T(1), T(1));
    }
    wv.backward(sv.m, du.view(), dmem, grads, true, flops, FlopCategory::other);  // dv = dU
    wb.backward(sv.m, dbl.view(), dmem, grads, true, flops, FlopCategory::other);
    dpfp_backward<T>(sv.k, nu, dmk, dk);
    wk.backward(sv.m, dk, dmem, grads, true, flops, FlopCategory::other);
    if (flops) flops->add(FlopCategory::other, (first ? 2 : 4) * flops::gemm(m, d, K));
  }
};

}  // namespace rmt
ENGRAM_NAMESPACE_END
