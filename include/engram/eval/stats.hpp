// Confidence intervals for accuracies measured on a finite number of samples.
#pragma once

#include <algorithm>
#include <cmath>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// A two-sided interval [lo, hi].
struct Interval {
  double lo = 0, hi = 1;
};

/// Wilson score interval of a binomial proportion with k successes in n trials (z = 1.96: 95%).
/// Unlike the normal approximation it stays inside [0, 1] and is honest at 0 or n successes.
inline Interval wilson(Index k, Index n, double z = 1.96) {
  check(n > 0 && k >= 0 && k <= n, "eval::wilson", "need 0 <= k <= n, n > 0; got k = ", k, ", n = ", n);
  const double p = double(k) / double(n), z2 = z * z, nn = double(n);
  const double centre = (p + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z / (1 + z2 / nn) * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

}  // namespace eval
ENGRAM_NAMESPACE_END
