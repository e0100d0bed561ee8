// Random initialisation of a model's parameters (for benchmarks, demos and tests).
#pragma once

#include <cmath>
#include <random>
#include <string>

#include "engram/nn/decoder.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Fills weights with N(0, std^2), norm scales with 1 and norm shifts and biases with 0, seeded.
template <class T>
void init_random(Decoder<T>& model, std::uint64_t seed, double std = 0.02) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, std);
  model.visit_parameters([&](const std::string& name, Tensor<T>& t) {
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c) t.row(r)[c] = is_bias ? T(0) : is_norm ? T(1) : T(normal(rng));
  });
}

/// The initialisation of GPT-2 / nanoGPT training runs: weights and embeddings N(0, std^2), the
/// projections that write into the residual stream (attention output, MLP down) N(0, (std /
/// sqrt(2 L))^2) so the residual stream's variance does not grow with depth, norm scales 1, norm
/// shifts and biases 0. Seeded; applies to any decoder (attention, TTT, ...).
template <class T>
void init_for_training(Decoder<T>& model, std::uint64_t seed, double std = 0.02) {
  std::mt19937_64 rng(seed);
  const double residual_std = std / std::sqrt(2.0 * double(std::max<Index>(model.config.n_layers, 1)));
  model.visit_parameters([&](const std::string& name, Tensor<T>& t) {
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const bool residual = name.ends_with(".out.weight") || name.ends_with(".down.weight") || name.ends_with("o_proj.weight");
    std::normal_distribution<double> normal(0.0, residual ? residual_std : std);
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c) t.row(r)[c] = is_bias ? T(0) : is_norm ? T(1) : T(normal(rng));
  });
}

ENGRAM_NAMESPACE_END
