// Learning-rate schedules: linear warm-up, then constant, linear or cosine decay to a floor.
#pragma once

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string_view>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// lr(t) for steps t = 1, 2, ...: peak * t / warmup during the warm-up, then a decay from peak to
/// min_lr reached at step `total` (and kept after it).
struct Schedule {
  enum class Decay { constant, linear, cosine };
  double peak = 1e-3;
  double min_lr = 0.0;
  Index warmup = 0;
  Index total = 1;
  Decay decay = Decay::cosine;

  void validate() const {
    const char* where = "train::Schedule";
    check(std::isfinite(peak) && peak > 0, where, "peak learning rate must be positive and finite, got ", peak);
    check(std::isfinite(min_lr) && min_lr >= 0 && min_lr <= peak, where, "min_lr must be in [0, peak = ", peak, "], got ", min_lr);
    check(warmup >= 0, where, "warm-up steps must be >= 0, got ", warmup);
    check(total >= 1 && total >= warmup, where, "total steps must be >= max(1, warm-up = ", warmup, "), got ", total);
  }

  double at(Index t) const {
    check(t >= 1, "train::Schedule", "steps count from 1, got ", t);
    if (t <= warmup) return peak * double(t) / double(warmup);
    if (decay == Decay::constant || total == warmup) return peak;
    const double progress = std::min(1.0, double(t - warmup) / double(total - warmup));
    if (decay == Decay::linear) return peak + (min_lr - peak) * progress;
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
};

inline Schedule::Decay parse_decay(std::string_view name) {
  if (name == "cosine") return Schedule::Decay::cosine;
  if (name == "linear") return Schedule::Decay::linear;
  if (name == "constant") return Schedule::Decay::constant;
  fail("train::Schedule", "unknown decay \"", name, "\" (expected cosine, linear or constant)");
}

}  // namespace train
ENGRAM_NAMESPACE_END
