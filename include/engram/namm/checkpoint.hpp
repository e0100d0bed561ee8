// NAMM weights on disk: a small safetensors file (theta [4172], mu [17], var [17], config in
// metadata) as written by examples/convert_namm_checkpoint.py from an evo-memory ckpt.pt.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engram/io/safetensors.hpp"
#include "engram/namm/policy.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// Everything a NammPolicy needs.
template <class T>
struct NammWeights {
  Tensor<T> theta;  ///< [4172], official flat layout
  NormStats stats;
  NammConfig config;

  NammPolicy<T> policy() const {
    return NammPolicy<T>(BamScorer<T>(std::span<const T>(theta.data(), std::size_t(theta.numel()))), stats, config);
  }
  /// The policy with `cap` as its hard cap (Budget::none(): the paper's uncapped rule), as an owned
  /// CachePolicy: what a policy factory needs (eval::make_policy, policies::NamedPolicy).
  std::unique_ptr<CachePolicy<T>> make_policy(Budget cap) const {
    NammConfig c = config;
    c.cap = cap;
    return std::make_unique<NammPolicy<T>>(BamScorer<T>(std::span<const T>(theta.data(), std::size_t(theta.numel()))), stats, c);
  }
};

/// Reads a NAMM weights file; throws Error naming the file and what is wrong.
template <class T>
NammWeights<T> load_namm(const std::string& path) {
  const auto f = safetensors::File::open(path);
  NammWeights<T> w;
  auto flat = [&](const char* name, Index expected) {  // any shape with `expected` values, row by row
    const auto t = f.read<double>(name);
    check(t.numel() == expected, path, name, " has ", t.numel(), " values, expected ", expected);
    std::vector<double> v;
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c) {
        check(std::isfinite(t(r, c)), path, name, " holds a non-finite value (", t(r, c), ") at element ", v.size());
        v.push_back(t(r, c));
      }
    return v;
  };
  const auto theta = flat("theta", BamScorer<T>::kParams);
  w.theta = Tensor<T>({BamScorer<T>::kParams});
  for (Index i = 0; i < w.theta.numel(); ++i) w.theta[i] = T(theta[std::size_t(i)]);
  const auto mu = flat("mu", NammConfig::kBins), var = flat("var", NammConfig::kBins);
  for (Index i = 0; i < NammConfig::kBins; ++i) {
    w.stats.mean[std::size_t(i)] = mu[std::size_t(i)];
    check(var[std::size_t(i)] >= 0, path, "var holds a negative variance (", var[std::size_t(i)], ") at element ", i);
    w.stats.var[std::size_t(i)] = var[std::size_t(i)];
  }
  w.stats.count = 1;
  const auto& meta = f.metadata();
  auto number = [&](const char* key, double fallback) {
    auto it = meta.find(key);
    if (it == meta.end()) return fallback;
    double v = 0;
    std::size_t used = 0;
    try {
      v = std::stod(it->second, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    check(used > 0 && used == it->second.size() && std::isfinite(v), path, "metadata \"", key, "\" is not a finite number: \"",
          it->second, "\"");
    return v;
  };
  const double n_up = number("n_up", double(w.config.n_up));
  check(n_up >= 1 && n_up <= double(1 << 24) && n_up == std::floor(n_up), path, "metadata \"n_up\" must be an integer in [1, 2^24], got ", n_up);
  w.config.n_up = Index(n_up);
  w.config.gamma = number("gamma", w.config.gamma);
  w.config.max_freq = number("max_freq", w.config.max_freq);
  check(number("n_fft", 32) == 32 && number("hop", 16) == 16 && number("hidden", 32) == 32, path,
        "only n_fft 32, hop 16 and hidden 32 (the official architecture) are supported");
  try {
    w.config.validate();
  } catch (const Error& e) {
    fail(path, e.what());
  }
  return w;
}

/// Writes a NAMM weights file.
template <class T>
void save_namm(const std::string& path, const NammWeights<T>& w) {
  safetensors::Writer out;
  out.add("theta", w.theta);
  Tensor<float> mu({NammConfig::kBins}), var({NammConfig::kBins});
  for (Index i = 0; i < NammConfig::kBins; ++i) mu[i] = float(w.stats.mean[std::size_t(i)]), var[i] = float(w.stats.var[std::size_t(i)]);
  out.add("mu", mu);
  out.add("var", var);
  out.set_metadata("n_up", std::to_string(w.config.n_up));
  out.set_metadata("gamma", std::to_string(w.config.gamma));
  out.set_metadata("max_freq", std::to_string(w.config.max_freq));
  out.set_metadata("n_fft", "32");
  out.set_metadata("hop", "16");
  out.set_metadata("hidden", "32");
  out.write(path);
}

}  // namespace namm
ENGRAM_NAMESPACE_END
