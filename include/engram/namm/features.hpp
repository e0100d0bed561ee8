// NAMM token features: streaming STFT of the attention each token receives (periodic Hann 32, hop
// 16, 17 magnitude bins) compressed by an EMA, the recency embedding, and the frozen normalisation.
#pragma once

#include <array>
#include <cmath>
#include <numbers>
#include <span>

#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"
#include "engram/namm/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// Per-token cache columns NAMM registers in every token table.
inline constexpr const char* kEmaColumn = "namm.ema";          ///< [n, 17] EMA of the spectrogram
inline constexpr const char* kHistoryColumn = "namm.history";  ///< [n, 32] attention of the previous hop | current hop

/// The windowed DFT of one 32-sample frame as a matrix, so a hop for n tokens is one GEMM
/// [n, 32] x [32, 32]^T: rows 0..16 are w[t] cos(2 pi f t / 32) (f = 0..16), rows 17..31 are
/// w[t] sin(2 pi f t / 32) for f = 1..15 (the sine rows of f = 0 and 16 vanish).
template <class T>
class SpectrogramTransform {
 public:
  static constexpr Index kWindow = NammConfig::kWindow, kBins = NammConfig::kBins, kHop = NammConfig::kHop;

  SpectrogramTransform() : dft_({kWindow, kWindow}) {
    for (Index t = 0; t < kWindow; ++t) {
      const double w = 0.5 - 0.5 * std::cos(2.0 * std::numbers::pi * double(t) / double(kWindow));  // periodic Hann
      for (Index f = 0; f < kBins; ++f) dft_(f, t) = T(w * std::cos(2.0 * std::numbers::pi * double(f * t) / double(kWindow)));
      for (Index f = 1; f < kBins - 1; ++f)
        dft_(kBins + f - 1, t) = T(w * std::sin(2.0 * std::numbers::pi * double(f * t) / double(kWindow)));
    }
  }

  /// spec [n, 17] = |DFT(w * frame)| for frames [n, 32]; `work` is [n, 32] scratch.
  void magnitudes(ConstView<T> frames, View<T> work, View<T> spec) const {
    matmul_nt<T>(frames, dft_.view(), work);
    for (Index i = 0; i < frames.rows(); ++i) bin_magnitudes(work.row(i), spec.row(i));
  }

  /// Completes a hop for n tokens: the frame of each token is its history row (previous 16 queries,
  /// then the 16 of this hop); ema <- a * ema + (1 - a) * |STFT| with a = gamma^16; then the history
  /// shifts (this hop becomes the previous one). `work` is [n, 32] scratch.
  void complete_hop(View<T> history, View<T> ema, T a, View<T> work) const {
    const Index n = history.rows();
    matmul_nt<T>(history, dft_.view(), work);
    alignas(64) T mag[kWindow];
    for (Index i = 0; i < n; ++i) {
      bin_magnitudes(work.row(i), mag);
      T* e = ema.row(i);
      for (Index f = 0; f < kBins; ++f) e[f] = a * e[f] + (T(1) - a) * mag[f];
      T* h = history.row(i);
      std::copy_n(h + kHop, kHop, h);
      std::fill_n(h + kHop, kHop, T(0));
    }
  }

  /// Analytic FLOPs of one hop per token: the DFT GEMM, the magnitudes and the EMA.
  static double flops_per_token() { return 2.0 * kWindow * kWindow + 4.0 * kBins + 3.0 * kBins; }

 private:
  // mag[0..16] from one GEMM row [re_0..re_16 | im_1..im_15]: bins 0..15 in registers (the imaginary
  // part of bin f sits at 16 + f, bin 0's is zero), the Nyquist bin is real.
  static void bin_magnitudes(const T* re_im, T* mag) {
    using B = simd::batch<T>;
    constexpr Index W = simd::width<T>;
    static_assert(kHop % W == 0 || W > kHop, "SIMD width must divide 16");
    if constexpr (W <= kHop) {
      const auto not_dc = !simd::first_lanes<T>(1);
      for (Index f0 = 0; f0 < kHop; f0 += W) {
        const B re = simd::load(re_im + f0);
        B im = simd::load(re_im + kHop + f0);
        if (f0 == 0) im = xsimd::select(not_dc, im, B(T(0)));
        simd::store(mag + f0, xsimd::sqrt(xsimd::fma(re, re, im * im)));
      }
    } else {
      mag[0] = std::abs(re_im[0]);
      for (Index f = 1; f < kHop; ++f) mag[f] = std::sqrt(re_im[f] * re_im[f] + re_im[kHop + f] * re_im[kHop + f]);
    }
    mag[kBins - 1] = std::abs(re_im[kBins - 1]);
  }

  Tensor<T> dft_;
};

/// out [n, 8] = [sin(r f_0..3), cos(r f_0..3)] with r = newest - position and
/// f_i = max_freq^(-i/4); angles in double so ages beyond 2^24 stay exact.
template <class T>
void recency_embedding(std::span<const std::int64_t> positions, std::int64_t newest, double max_freq, View<T> out) {
  check_shape(out, Index(positions.size()), NammConfig::kRecencyDims, "namm::recency_embedding", "output");
  constexpr Index half = NammConfig::kRecencyDims / 2;
  std::array<double, half> freq;
  for (Index i = 0; i < half; ++i) freq[std::size_t(i)] = std::pow(max_freq, -double(i) / double(half));
  for (std::size_t k = 0; k < positions.size(); ++k) {
    const double r = double(newest - positions[k]);
    for (Index i = 0; i < half; ++i) {
      out(Index(k), i) = T(std::sin(r * freq[std::size_t(i)]));
      out(Index(k), half + i) = T(std::cos(r * freq[std::size_t(i)]));
    }
  }
}

/// Frozen per-bin statistics of the EMA features, shared by every layer, head and token.
struct NormStats {
  std::array<double, NammConfig::kBins> mean{};
  std::array<double, NammConfig::kBins> var{};
  double count = 0;  ///< entries pooled

  /// Pools a batch of EMA rows [n, 17] into the population statistics (Chan et al.'s merge, exact
  /// for any split of the data).
  template <class T>
  void add(ConstView<T> ema) {
    const double n = double(ema.rows());
    if (n == 0) return;
    for (Index f = 0; f < NammConfig::kBins; ++f) {
      double m = 0, m2 = 0;
      for (Index i = 0; i < ema.rows(); ++i) m += double(ema(i, f));
      m /= n;
      for (Index i = 0; i < ema.rows(); ++i) m2 += (double(ema(i, f)) - m) * (double(ema(i, f)) - m);
      merge_bin(f, n, m, m2);
    }
    count += n;
  }
  /// Merges statistics gathered elsewhere (another sequence, another thread).
  void merge(const NormStats& o) {
    if (o.count == 0) return;
    for (Index f = 0; f < NammConfig::kBins; ++f) merge_bin(f, o.count, o.mean[std::size_t(f)], o.var[std::size_t(f)] * o.count);
    count += o.count;
  }

 private:
  void merge_bin(Index f, double n, double m, double m2) {
    auto& mu = mean[std::size_t(f)];
    auto& v = var[std::size_t(f)];
    const double total = count + n, delta = m - mu;
    const double m2_all = v * count + m2 + delta * delta * count * n / total;
    mu += delta * n / total;
    v = m2_all / total;
  }
};

/// z [n, 17] = (ema - mean) / max(sqrt(var), 1e-7) per bin.
template <class T>
void normalize_features(ConstView<T> ema, const NormStats& stats, View<T> z) {
  for (Index f = 0; f < NammConfig::kBins; ++f) {
    // 1e-7: the official floor on the standard deviation (a constant bin must not divide by zero).
    const double inv = 1.0 / std::max(std::sqrt(stats.var[std::size_t(f)]), 1e-7);
    for (Index i = 0; i < ema.rows(); ++i) z(i, f) = T((double(ema(i, f)) - stats.mean[std::size_t(f)]) * inv);
  }
}

}  // namespace namm
ENGRAM_NAMESPACE_END
