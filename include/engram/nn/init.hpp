// Random initialisation of a model's parameters (for benchmarks, demos and tests).
#pragma once

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

ENGRAM_NAMESPACE_END
