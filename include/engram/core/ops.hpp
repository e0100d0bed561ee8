// Row-wise vector ops: masked softmax, layer_norm, rms_norm, GELU (tanh, erf), SiLU, RoPE.
#pragma once

#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <span>
#include <utility>
#include <vector>

#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

// ---------------------------------------------------------------------------------------------
// softmax

/// x[i] = exp(x[i] - shift) for i < n (exp(-inf) = 0); returns the sum of the results (fused, so
/// softmax reads the row once for both).
template <class T>
T exp_shifted(T* x, Index n, T shift) {
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const B sb(shift);
  B acc0(T(0)), acc1(T(0));
  Index i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const B e0 = simd::exp(simd::load(x + i) - sb), e1 = simd::exp(simd::load(x + i + W) - sb);
    simd::store(x + i, e0);
    simd::store(x + i + W, e1);
    acc0 += e0;
    acc1 += e1;
  }
  for (; i + W <= n; i += W) {
    const B e = simd::exp(simd::load(x + i) - sb);
    simd::store(x + i, e);
    acc0 += e;
  }
  T total = simd::reduce_add(acc0 + acc1);
  if (i < n) {
    // Tail through a register padded with -inf (exp gives 0), so it rounds like the vector body.
    alignas(64) std::array<T, B::size> buf;
    buf.fill(-std::numeric_limits<T>::infinity());
    std::copy(x + i, x + n, buf.begin());
    const B e = simd::exp(B::load_aligned(buf.data()) - sb);
    e.store_aligned(buf.data());
    std::copy(buf.begin(), buf.begin() + (n - i), x + i);
    total += simd::reduce_add(e);
  }
  return total;
}

/// In-place softmax of row[lo, hi); entries outside the range become 0. A range whose entries are
/// all -inf (or an empty range) yields an all-zero row instead of NaN.
template <class T>
void softmax_row(T* row, Index n, Index lo, Index hi) {
  const T m = simd::max(row + lo, hi - lo);
  std::fill(row, row + lo, T(0));
  std::fill(row + hi, row + n, T(0));
  if (!(m > -std::numeric_limits<T>::infinity())) {
    std::fill(row + lo, row + hi, T(0));
    return;
  }
  const T s = exp_shifted(row + lo, hi - lo, m);
  simd::scale(T(1) / s, row + lo, hi - lo);
}

/// Softmax of every row over all columns.
template <class T>
void softmax_rows(View<T> x) {
  for (Index r = 0; r < x.rows(); ++r) softmax_row(x.row(r), x.cols(), 0, x.cols());
}

/// Causal softmax: row i sees columns 0 .. offset + i (queries at the end of the key sequence use
/// offset = cols - rows). Masked entries become 0.
template <class T>
void softmax_rows_causal(View<T> x, Index offset) {
  for (Index r = 0; r < x.rows(); ++r)
    softmax_row(x.row(r), x.cols(), 0, std::clamp<Index>(offset + r + 1, 0, x.cols()));
}

/// Softmax with an explicit mask [rows, cols] (nonzero = visible); masked entries become 0 and a
/// fully masked row becomes all zeros.
template <class T>
void softmax_rows_masked(View<T> x, ConstView<std::uint8_t> mask) {
  check_shape(mask, x.rows(), x.cols(), "softmax_rows_masked", "mask");
  for (Index r = 0; r < x.rows(); ++r) {
    T* row = x.row(r);
    for (Index c = 0; c < x.cols(); ++c)
      if (!mask(r, c)) row[c] = -std::numeric_limits<T>::infinity();
    softmax_row(row, x.cols(), 0, x.cols());
  }
}

// ---------------------------------------------------------------------------------------------
// normalisation

/// Mean and 1 / sqrt(biased variance + eps) of x[0, n), in two passes (stable for large means).
template <class T>
std::pair<T, T> mean_rstd(const T* x, Index n, T eps) {
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const T mean = simd::sum(x, n) / T(n);
  const B mb(mean);
  B acc(T(0));
  Index i = 0;
  for (; i + W <= n; i += W) {
    const B d = simd::load(x + i) - mb;
    acc = xsimd::fma(d, d, acc);
  }
  T var = simd::reduce_add(acc);
  for (; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  return {mean, T(1) / std::sqrt(var / T(n) + eps)};
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta per row (biased variance). gamma/beta may be
/// null (no affine). y may alias x.
template <class T>
void layer_norm(ConstView<T> x, const T* gamma, const T* beta, T eps, View<T> y) {
  check(x.rows() == y.rows() && x.cols() == y.cols(), "layer_norm", "output shape [", y.rows(), ", ", y.cols(),
        "] differs from input [", x.rows(), ", ", x.cols(), "]");
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const Index n = x.cols();
  if (n == 0) return;
  for (Index r = 0; r < x.rows(); ++r) {
    const T* in = x.row(r);
    T* out = y.row(r);
    const auto [mean, rstd] = mean_rstd(in, n, eps);
    const B mb(mean), rb(rstd);
    Index i = 0;
    for (; i + W <= n; i += W) {
      B v = (simd::load(in + i) - mb) * rb;
      if (gamma) v *= simd::load(gamma + i);
      if (beta) v += simd::load(beta + i);
      simd::store(out + i, v);
    }
    for (; i < n; ++i) out[i] = (in[i] - mean) * rstd * (gamma ? gamma[i] : T(1)) + (beta ? beta[i] : T(0));
  }
}

/// y = x / sqrt(mean(x^2) + eps) * weight per row (weight may be null). y may alias x.
template <class T>
void rms_norm(ConstView<T> x, const T* weight, T eps, View<T> y) {
  check(x.rows() == y.rows() && x.cols() == y.cols(), "rms_norm", "output shape [", y.rows(), ", ", y.cols(),
        "] differs from input [", x.rows(), ", ", x.cols(), "]");
  const Index n = x.cols();
  if (n == 0) return;
  for (Index r = 0; r < x.rows(); ++r) {
    const T* in = x.row(r);
    T* out = y.row(r);
    const T rstd = T(1) / std::sqrt(simd::dot(in, in, n) / T(n) + eps);
    if (weight) {
      for (Index i = 0; i < n; ++i) out[i] = in[i] * rstd * weight[i];
    } else {
      for (Index i = 0; i < n; ++i) out[i] = in[i] * rstd;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// activations (in place on views)

namespace detail {
template <class T>
inline constexpr T kSqrt2OverPi = T(0.7978845608028654);  // sqrt(2 / pi), the tanh-GELU constant
template <class T>
inline constexpr T kGeluCubic = T(0.044715);  // cubic coefficient of the tanh approximation

template <class T, class F>
void map_rows(View<T> x, F&& f) {
  for (Index r = 0; r < x.rows(); ++r) simd::map(x.row(r), x.row(r), x.cols(), f);
}
}  // namespace detail

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class T>
void gelu_tanh(View<T> x) {
  detail::map_rows(x, [](auto v) {
    using V = decltype(v);
    const V u = V(detail::kSqrt2OverPi<T>) * (v + V(detail::kGeluCubic<T>) * v * v * v);
    if constexpr (std::is_same_v<V, T>) return T(0.5) * v * (T(1) + std::tanh(u));
    else return V(T(0.5)) * v * (V(T(1)) + xsimd::tanh(u));
  });
}

namespace detail {
/// gelu_tanh'(v) for a scalar or a batch of T (shared by gelu_tanh_derivative and its backward).
template <class T, class V>
V gelu_tanh_grad(V v) {
  const V c(kSqrt2OverPi<T>), a(kGeluCubic<T>), half(T(0.5)), one(T(1)), three(T(3));
  const V u = c * (v + a * v * v * v);
  V t;
  if constexpr (std::is_same_v<V, T>) t = std::tanh(u);
  else t = xsimd::tanh(u);
  return half * (one + t) + half * v * (one - t * t) * c * (one + three * a * v * v);
}
}  // namespace detail

/// Derivative of the tanh-approximated GELU, in place: x <- gelu_tanh'(x).
template <class T>
void gelu_tanh_derivative(View<T> x) {
  detail::map_rows(x, [](auto v) { return detail::gelu_tanh_grad<T>(v); });
}

/// Exact GELU: 0.5 x (1 + erf(x / sqrt(2))).
template <class T>
void gelu_erf(View<T> x) {
  detail::map_rows(x, [](auto v) {
    using V = decltype(v);
    const V inv_sqrt2(T(0.7071067811865476));
    if constexpr (std::is_same_v<V, T>) return T(0.5) * v * (T(1) + std::erf(v * inv_sqrt2));
    else return V(T(0.5)) * v * (V(T(1)) + xsimd::erf(v * inv_sqrt2));
  });
}

/// SiLU (swish): x * sigmoid(x).
template <class T>
void silu(View<T> x) {
  detail::map_rows(x, [](auto v) {
    using V = decltype(v);
    if constexpr (std::is_same_v<V, T>) return v / (T(1) + std::exp(-v));
    else return v / (V(T(1)) + xsimd::exp(-v));
  });
}

/// Logistic sigmoid.
template <class T>
void sigmoid(View<T> x) {
  detail::map_rows(x, [](auto v) {
    using V = decltype(v);
    if constexpr (std::is_same_v<V, T>) return T(1) / (T(1) + std::exp(-v));
    else return V(T(1)) / (V(T(1)) + xsimd::exp(-v));
  });
}

// ---------------------------------------------------------------------------------------------
// rotary position embedding

/// Which channels a rotation pairs: rotate_half pairs (i, i + d/2) (HF Llama, GPT-NeoX);
/// interleaved pairs (2i, 2i + 1) (GPT-J, Meta's original Llama, TTT).
enum class RopePairing { rotate_half, interleaved };

/// Frequency scaling of RoPE for context extension.
struct RopeScaling {
  enum class Kind { none, linear, ntk, llama3 };
  Kind kind = Kind::none;
  double factor = 1.0;  ///< linear: positions / factor; ntk and llama3: the context multiplier
  double alpha = 1.0;   ///< ntk: base' = theta * (alpha * factor - (alpha - 1))^(d / (d - 2))
  double low_freq_factor = 1.0;                ///< llama3
  double high_freq_factor = 4.0;               ///< llama3
  double original_max_positions = 8192.0;      ///< llama3
};

/// The rotation frequencies theta^(-2i/d), i < d/2, after scaling (computed in double).
inline std::vector<double> rope_inv_freq(Index head_dim, double theta, const RopeScaling& scaling = {}) {
  check(head_dim > 0 && head_dim % 2 == 0, "rope_inv_freq", "head_dim must be positive and even, got ", head_dim);
  check(theta > 0, "rope_inv_freq", "theta must be positive, got ", theta);
  check(scaling.factor > 0, "rope_inv_freq", "scaling factor must be positive, got ", scaling.factor);
  const double d = double(head_dim);
  double base = theta;
  if (scaling.kind == RopeScaling::Kind::ntk) {
    check(head_dim > 2, "rope_inv_freq", "NTK scaling needs head_dim > 2");
    base = theta * std::pow(scaling.alpha * scaling.factor - (scaling.alpha - 1.0), d / (d - 2.0));
  }
  std::vector<double> inv(std::size_t(head_dim / 2));
  for (std::size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(base, -2.0 * double(i) / d);
  if (scaling.kind == RopeScaling::Kind::linear) {
    for (double& f : inv) f /= scaling.factor;
  } else if (scaling.kind == RopeScaling::Kind::llama3) {
    check(scaling.high_freq_factor > scaling.low_freq_factor, "rope_inv_freq",
          "llama3 scaling needs high_freq_factor > low_freq_factor");
    const double low_wavelen = scaling.original_max_positions / scaling.low_freq_factor;
    const double high_wavelen = scaling.original_max_positions / scaling.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= scaling.factor;  // long wavelengths: fully interpolated
      } else if (wavelen >= high_wavelen) {  // in between: blend of scaled and unscaled
        const double smooth = (scaling.original_max_positions / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }
    }
  }
  return inv;
}

/// cos/sin of position * inv_freq for a list of positions: [n_positions, head_dim / 2] each.
template <class T>
struct RopeTable {
  Tensor<T> cos, sin;
  Index half() const { return cos.cols(); }
  Index size() const { return cos.rows(); }
};

/// Fills `table` for the given absolute positions, reusing its storage; angles are computed in
/// double so large positions keep full precision.
template <class T>
void fill_rope_table(RopeTable<T>& t, std::span<const double> inv_freq, std::span<const std::int64_t> positions) {
  const Index n = Index(positions.size()), half = Index(inv_freq.size());
  t.cos.reshape_rows(n, half);
  t.sin.reshape_rows(n, half);
  for (Index p = 0; p < n; ++p)
    for (Index i = 0; i < half; ++i) {
      const double angle = double(positions[std::size_t(p)]) * inv_freq[std::size_t(i)];
      t.cos(p, i) = T(std::cos(angle));
      t.sin(p, i) = T(std::sin(angle));
    }
}

/// The table for the given absolute positions.
template <class T>
RopeTable<T> make_rope_table(std::span<const double> inv_freq, std::span<const std::int64_t> positions) {
  RopeTable<T> t;
  fill_rope_table(t, inv_freq, positions);
  return t;
}

namespace detail {
// Rotates every pair of x by +angle (forward) or -angle (Inverse: the transpose, which is the
// backward of the rotation); row r uses row table_row0 + r of the table.
template <bool Inverse, class T>
void rope_rotate(View<T> x, Index n_heads, Index head_dim, const RopeTable<T>& table, RopePairing pairing,
                 Index table_row0, const char* where) {
  check(x.cols() == n_heads * head_dim, where, "expected ", n_heads, " heads x ", head_dim, " = ",
        n_heads * head_dim, " columns, got ", x.cols());
  check(table.half() * 2 == head_dim, where, "table covers head_dim ", table.half() * 2, ", expected ", head_dim);
  check(table_row0 >= 0 && table_row0 + x.rows() <= table.size(), where, "rows [", table_row0, ", ",
        table_row0 + x.rows(), ") outside a table of ", table.size(), " positions");
  const Index half = head_dim / 2;
  for (Index r = 0; r < x.rows(); ++r) {
    const T* c = table.cos.row(table_row0 + r);
    const T* sn = table.sin.row(table_row0 + r);
    for (Index h = 0; h < n_heads; ++h) {
      T* v = x.row(r) + h * head_dim;
      if (pairing == RopePairing::rotate_half) {
        for (Index i = 0; i < half; ++i) {
          const T a = v[i], b = v[i + half], s = Inverse ? -sn[i] : sn[i];
          v[i] = a * c[i] - b * s;
          v[i + half] = b * c[i] + a * s;
        }
      } else {
        for (Index i = 0; i < half; ++i) {
          const T a = v[2 * i], b = v[2 * i + 1], s = Inverse ? -sn[i] : sn[i];
          v[2 * i] = a * c[i] - b * s;
          v[2 * i + 1] = a * s + b * c[i];
        }
      }
    }
  }
}
}  // namespace detail

/// Rotates x [rows, n_heads * head_dim] in place; row r uses row table_row0 + r of the table (a
/// table built once for a fixed set of positions, e.g. TTT's positions 0..15, serves any run of them).
template <class T>
void apply_rope(View<T> x, Index n_heads, Index head_dim, const RopeTable<T>& table, RopePairing pairing,
                Index table_row0) {
  detail::rope_rotate<false>(x, n_heads, head_dim, table, pairing, table_row0, "apply_rope");
}

/// Rotates x [rows, n_heads * head_dim] in place; row r uses row r of the table.
template <class T>
void apply_rope(View<T> x, Index n_heads, Index head_dim, const RopeTable<T>& table, RopePairing pairing) {
  check(table.size() == x.rows(), "apply_rope", "table has ", table.size(), " positions for ", x.rows(), " rows");
  apply_rope<T>(x, n_heads, head_dim, table, pairing, 0);
}

ENGRAM_NAMESPACE_END
