// NammConfig: the knobs of the NAMM memory model (its optional cap is a Budget, nn/cache_policy.hpp).
#pragma once

#include <cmath>
#include <limits>

#include "engram/core/error.hpp"
#include "engram/nn/cache_policy.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// Hyper-parameters of the NAMM memory model (defaults: the official evo-memory configuration).
struct NammConfig {
  Index n_up = 512;           ///< tokens between updates (memory_policy_fixed_delay)
  double gamma = 0.99;        ///< EMA coefficient per query (embedding_ema_coeff)
  double max_freq = 50000.0;  ///< recency embedding base
  float threshold = 0.0f;     ///< a token is evictable iff its score < threshold
  Budget cap;                 ///< optional hard cap (top-k by score before thresholding)
  bool round_bf16 = false;    ///< round attention to bfloat16 before the STFT, as the paper's runs did

  static constexpr Index kHop = 16;             ///< STFT hop (queries per frame)
  static constexpr Index kWindow = 32;          ///< periodic Hann window length = n_fft
  static constexpr Index kBins = 17;            ///< one-sided magnitude bins: n_fft / 2 + 1
  static constexpr Index kRecencyDims = 8;      ///< sin and cos of 4 frequencies
  static constexpr Index kFeatures = kRecencyDims + kBins;  ///< BAM input width: 25
  static constexpr Index kHidden = 32;          ///< BAM attention width

  void validate() const {
    check(n_up > 0 && n_up % kHop == 0, "NammConfig", "n_up must be a positive multiple of the hop ", kHop, ", got ", n_up);
    check(gamma > 0.0 && gamma < 1.0, "NammConfig", "gamma must be in (0, 1), got ", gamma);
    check(max_freq > 0.0, "NammConfig", "max_freq must be positive, got ", max_freq);
    check(std::isfinite(threshold), "NammConfig", "threshold must be finite");
  }
};

}  // namespace namm
ENGRAM_NAMESPACE_END
