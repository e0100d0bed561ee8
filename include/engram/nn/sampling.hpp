// Next-token choice from logits: greedy, temperature, top-k; seeded and reproducible.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

struct SamplerOptions {
  double temperature = 0.0;  ///< 0: greedy (argmax)
  Index top_k = 0;           ///< 0: the whole vocabulary
  std::uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions o = {}) : options_(o), rng_(o.seed) {
    check(o.temperature >= 0 && std::isfinite(o.temperature), "Sampler", "temperature must be finite and >= 0, got ", o.temperature);
    check(o.top_k >= 0, "Sampler", "top_k must be >= 0, got ", o.top_k);
  }

  /// Chooses a token from one row of logits. Throws Error for an empty row or a row without any
  /// finite logit (NaN from a broken model is reported, not sampled).
  template <class T>
  std::int32_t sample(const T* logits, Index n) {
    check(n > 0, "Sampler", "empty logits");
    Index best = -1;
    for (Index i = 0; i < n; ++i) {
      check(!std::isnan(double(logits[i])), "Sampler", "NaN logit at token ", i);
      if (best < 0 || logits[i] > logits[best]) best = i;
    }
    check(std::isfinite(double(logits[best])), "Sampler", "no finite logit");
    if (options_.temperature == 0.0 || options_.top_k == 1) return std::int32_t(best);
    std::vector<Index> ids(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) ids[std::size_t(i)] = i;
    Index k = options_.top_k > 0 ? std::min(options_.top_k, n) : n;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](Index a, Index b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    std::vector<double> p(static_cast<std::size_t>(k));
    const double top = double(logits[ids[0]]);
    for (Index i = 0; i < k; ++i) p[std::size_t(i)] = std::exp((double(logits[ids[std::size_t(i)]]) - top) / options_.temperature);
    std::discrete_distribution<Index> dist(p.begin(), p.end());
    return std::int32_t(ids[std::size_t(dist(rng_))]);
  }

  template <class T>
  std::int32_t sample(ConstView<T> logits_row) {
    check(logits_row.rows() == 1, "Sampler", "expected one row of logits, got ", logits_row.rows());
    return sample(logits_row.row(0), logits_row.cols());
  }

 private:
  SamplerOptions options_;
  std::mt19937_64 rng_;
};

ENGRAM_NAMESPACE_END
