// Backward of every row-wise op of ops.hpp: layer_norm, rms_norm, the activations (GELU tanh/erf,
// SiLU, ReLU, sigmoid), softmax rows and RoPE. Nothing is saved by the forward: norms recompute
// their statistics from x, activations read their pre-activation input.
#pragma once

#include <array>
#include <cmath>
#include <numbers>

#include "engram/core/ops.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

namespace detail {

template <class A, class B, class C>
void check_same_shape(const A& a, const B& b, const C& c, const char* where, const char* names) {
  check(a.rows() == b.rows() && a.cols() == b.cols() && a.rows() == c.rows() && a.cols() == c.cols(), where, names,
        " must have one shape, got [", a.rows(), ", ", a.cols(), "], [", b.rows(), ", ", b.cols(), "] and [", c.rows(),
        ", ", c.cols(), "]");
}

// out[i] = f(a[i], b[i]) row by row, with f callable on batches and on scalars (a generic lambda);
// the tail goes through zero-padded registers so it rounds like the vector body. out may alias a or b.
template <class T, class F>
void zip_rows(ConstView<T> a, ConstView<T> b, View<T> out, F&& f) {
  using Bt = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const Index n = a.cols();
  for (Index r = 0; r < a.rows(); ++r) {
    const T* pa = a.row(r);
    const T* pb = b.row(r);
    T* po = out.row(r);
    Index i = 0;
    for (; i + W <= n; i += W) simd::store(po + i, f(simd::load(pa + i), simd::load(pb + i)));
    if (i < n) {
      alignas(64) std::array<T, Bt::size> ba{}, bb{};
      std::copy(pa + i, pa + n, ba.begin());
      std::copy(pb + i, pb + n, bb.begin());
      const Bt v = f(Bt::load_aligned(ba.data()), Bt::load_aligned(bb.data()));
      v.store_aligned(ba.data());
      std::copy(ba.begin(), ba.begin() + (n - i), po + i);
    }
  }
}

// dx = dy * f'(x) elementwise, with `grad` computing f' on a batch.
template <class T, class G>
void activation_backward(ConstView<T> x, ConstView<T> dy, View<T> dx, const char* where, G&& grad) {
  check_same_shape(x, dy, dx, where, "x, dy and dx");
  zip_rows<T>(x, dy, dx, [&](auto v, auto g) { return g * grad(v); });
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// normalisation

/// dx = dL/dx of y = layer_norm(x; gamma, beta, eps) given dy [rows, n]: with xhat = (x - mean) * rstd
/// and g = dy * gamma, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). dgamma += sum over rows of
/// dy * xhat and dbeta += sum of dy (either may be null; gamma may be null for no affine).
/// accumulate: dx += instead of dx =. Recomputes mean/rstd from x (nothing saved). dx may alias dy.
template <class T>
void layer_norm_backward(ConstView<T> x, const T* gamma, T eps, ConstView<T> dy, View<T> dx, T* dgamma, T* dbeta,
                         bool accumulate = false) {
  detail::check_same_shape(x, dy, dx, "layer_norm_backward", "x, dy and dx");
  using Bt = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const Index n = x.cols();
  if (n == 0) return;
  for (Index r = 0; r < x.rows(); ++r) {
    const T* in = x.row(r);
    const T* g_in = dy.row(r);
    T* out = dx.row(r);
    const auto [mean, rstd] = mean_rstd(in, n, eps);
    const Bt mb(mean), rb(rstd);
    // Pass 1: sum(g) and sum(g * xhat).
    Bt acc_g(T(0)), acc_gx(T(0));
    Index i = 0;
    for (; i + W <= n; i += W) {
      Bt g = simd::load(g_in + i);
      if (gamma) g *= simd::load(gamma + i);
      acc_g += g;
      acc_gx = xsimd::fma(g, (simd::load(in + i) - mb) * rb, acc_gx);
    }
    T sum_g = simd::reduce_add(acc_g), sum_gx = simd::reduce_add(acc_gx);
    for (Index j = i; j < n; ++j) {
      const T g = g_in[j] * (gamma ? gamma[j] : T(1));
      sum_g += g;
      sum_gx += g * (in[j] - mean) * rstd;
    }
    const T mg = sum_g / T(n), mgx = sum_gx / T(n);
    // Pass 2: dx, dgamma, dbeta (every read of index j precedes the write of index j: dx may alias dy).
    const Bt mgb(mg), mgxb(mgx);
    for (i = 0; i + W <= n; i += W) {
      const Bt d = simd::load(g_in + i);
      const Bt xhat = (simd::load(in + i) - mb) * rb;
      const Bt g = gamma ? d * simd::load(gamma + i) : d;
      if (dgamma) simd::store(dgamma + i, xsimd::fma(d, xhat, simd::load(dgamma + i)));
      if (dbeta) simd::store(dbeta + i, simd::load(dbeta + i) + d);
      Bt v = rb * (g - mgb - xhat * mgxb);
      if (accumulate) v += simd::load(out + i);
      simd::store(out + i, v);
    }
    for (; i < n; ++i) {
      const T d = g_in[i], xhat = (in[i] - mean) * rstd, g = d * (gamma ? gamma[i] : T(1));
      if (dgamma) dgamma[i] += d * xhat;
      if (dbeta) dbeta[i] += d;
      const T v = rstd * (g - mg - xhat * mgx);
      out[i] = accumulate ? out[i] + v : v;
    }
  }
}

/// dx = dL/dx of y = rms_norm(x; weight, eps) given dy: with rstd = 1 / sqrt(mean(x^2) + eps) and
/// g = dy * weight, dx = rstd * g - x * rstd^3 * mean(g * x). dweight (may be null) += sum over rows
/// of dy * x * rstd; weight may be null. accumulate: dx += instead of dx =. dx may alias dy.
template <class T>
void rms_norm_backward(ConstView<T> x, const T* weight, T eps, ConstView<T> dy, View<T> dx, T* dweight,
                       bool accumulate = false) {
  detail::check_same_shape(x, dy, dx, "rms_norm_backward", "x, dy and dx");
  using Bt = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const Index n = x.cols();
  if (n == 0) return;
  for (Index r = 0; r < x.rows(); ++r) {
    const T* in = x.row(r);
    const T* g_in = dy.row(r);
    T* out = dx.row(r);
    const T rstd = T(1) / std::sqrt(simd::dot(in, in, n) / T(n) + eps);
    Bt acc(T(0));
    Index i = 0;
    for (; i + W <= n; i += W) {
      Bt g = simd::load(g_in + i);
      if (weight) g *= simd::load(weight + i);
      acc = xsimd::fma(g, simd::load(in + i), acc);
    }
    T sum_gx = simd::reduce_add(acc);
    for (Index j = i; j < n; ++j) sum_gx += g_in[j] * (weight ? weight[j] : T(1)) * in[j];
    const T c = rstd * rstd * rstd * sum_gx / T(n);
    const Bt rb(rstd), cb(c);
    for (i = 0; i + W <= n; i += W) {
      const Bt d = simd::load(g_in + i), xv = simd::load(in + i);
      const Bt g = weight ? d * simd::load(weight + i) : d;
      if (dweight) simd::store(dweight + i, xsimd::fma(d, xv * rb, simd::load(dweight + i)));
      Bt v = xsimd::fms(rb, g, xv * cb);
      if (accumulate) v += simd::load(out + i);
      simd::store(out + i, v);
    }
    for (; i < n; ++i) {
      const T d = g_in[i], g = d * (weight ? weight[i] : T(1));
      if (dweight) dweight[i] += d * in[i] * rstd;
      const T v = rstd * g - in[i] * c;
      out[i] = accumulate ? out[i] + v : v;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// activations: dx = dy * f'(x), x the pre-activation input; dx may alias dy (or x)

/// Backward of gelu_tanh.
template <class T>
void gelu_tanh_backward(ConstView<T> x, ConstView<T> dy, View<T> dx) {
  detail::activation_backward(x, dy, dx, "gelu_tanh_backward", [](auto v) { return detail::gelu_tanh_grad<T>(v); });
}

/// Backward of gelu_erf: f'(x) = Phi(x) + x phi(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi).
template <class T>
void gelu_erf_backward(ConstView<T> x, ConstView<T> dy, View<T> dx) {
  detail::activation_backward(x, dy, dx, "gelu_erf_backward", [](auto v) {
    using V = decltype(v);
    const V inv_sqrt2(T(0.7071067811865476)), inv_sqrt_2pi(T(0.3989422804014327)), half(T(0.5)), one(T(1));
    return half * (one + xsimd::erf(v * inv_sqrt2)) + v * inv_sqrt_2pi * xsimd::exp(-half * v * v);
  });
}

/// Backward of silu: f'(x) = s (1 + x (1 - s)) with s = sigmoid(x).
template <class T>
void silu_backward(ConstView<T> x, ConstView<T> dy, View<T> dx) {
  detail::activation_backward(x, dy, dx, "silu_backward", [](auto v) {
    using V = decltype(v);
    const V one(T(1));
    const V s = one / (one + xsimd::exp(-v));
    return s * (one + v * (one - s));
  });
}

/// Backward of relu (max(x, 0)): dy where x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch).
template <class T>
void relu_backward(ConstView<T> x, ConstView<T> dy, View<T> dx) {
  detail::check_same_shape(x, dy, dx, "relu_backward", "x, dy and dx");
  detail::zip_rows<T>(x, dy, dx, [](auto v, auto g) {
    using V = decltype(v);
    return xsimd::select(v > V(T(0)), g, V(T(0)));
  });
}

/// Backward of sigmoid from its OUTPUT y: dx = dy * y * (1 - y). dx may alias dy or y.
template <class T>
void sigmoid_backward(ConstView<T> y, ConstView<T> dy, View<T> dx) {
  detail::check_same_shape(y, dy, dx, "sigmoid_backward", "y, dy and dx");
  detail::zip_rows<T>(y, dy, dx, [](auto v, auto g) {
    using V = decltype(v);
    return g * v * (V(T(1)) - v);
  });
}

// ---------------------------------------------------------------------------------------------
// softmax and RoPE

/// Backward of softmax rows from the probabilities p and dp = dL/dp: dx = p * (dp - sum(p * dp))
/// per row (masked entries have p = 0 and get 0). dx may alias dp.
template <class T>
void softmax_rows_backward(ConstView<T> p, ConstView<T> dp, View<T> dx) {
  detail::check_same_shape(p, dp, dx, "softmax_rows_backward", "p, dp and dx");
  using Bt = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const Index n = p.cols();
  for (Index r = 0; r < p.rows(); ++r) {
    const T* pr = p.row(r);
    const T* gr = dp.row(r);
    T* out = dx.row(r);
    const T s = simd::dot(pr, gr, n);
    const Bt sb(s);
    Index i = 0;
    for (; i + W <= n; i += W) simd::store(out + i, simd::load(pr + i) * (simd::load(gr + i) - sb));
    for (; i < n; ++i) out[i] = pr[i] * (gr[i] - s);
  }
}

/// Backward of apply_rope (both overloads): rotates dx [rows, n_heads * head_dim] in place by the
/// inverse rotation (the transpose of the forward's), row r using row table_row0 + r of the same
/// table, so every RoPE scaling the forward supports is covered.
template <class T>
void apply_rope_backward(View<T> dx, Index n_heads, Index head_dim, const RopeTable<T>& table, RopePairing pairing,
                         Index table_row0 = 0) {
  detail::rope_rotate<true>(dx, n_heads, head_dim, table, pairing, table_row0, "apply_rope_backward");
}

ENGRAM_NAMESPACE_END
