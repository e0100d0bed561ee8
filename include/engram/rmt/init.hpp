// Initial memories of the three RMT variants (rmt.md 10): HF decoder randn * std(wte), the
// NeurIPS-22 single shared vector, and the BERT memory tokens appended to the vocabulary.
#pragma once

#include <cmath>
#include <random>

#include "engram/nn/decoder.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// HF MemoryCell.create_memory: [m, d] = N(0, 1) * std(word embeddings), seeded.
template <class T>
Tensor<T> hf_initial_memory(const Decoder<T>& backbone, Index m, std::uint64_t seed) {
  check(m >= 0, "rmt::hf_initial_memory", "memory_tokens must be >= 0, got ", m);
  const Tensor<T>& w = backbone.embed.weight;
  double sum = 0, sq = 0;
  for (Index r = 0; r < w.rows(); ++r)
    for (Index c = 0; c < w.cols(); ++c) sum += double(w(r, c)), sq += double(w(r, c)) * double(w(r, c));
  const double n = double(w.numel());
  // torch.std is the unbiased estimate (n - 1).
  const double std = n > 1 ? std::sqrt(std::max(0.0, (sq - sum * sum / n) / (n - 1))) : 0.0;
  Tensor<T> mem({m, w.cols()});
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Index r = 0; r < m; ++r)
    for (Index c = 0; c < w.cols(); ++c) mem(r, c) = T(normal(rng) * std);
  return mem;
}

/// NeurIPS-22 init_mem_tokens: one N(0, 1) vector repeated m times (slots differ only by position).
template <class T>
Tensor<T> shared_vector_memory(Index m, Index d, std::uint64_t seed) {
  check(m >= 0 && d > 0, "rmt::shared_vector_memory", "expected m >= 0 and d > 0, got m = ", m, ", d = ", d);
  Tensor<T> mem({m, d});
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Index c = 0; c < d; ++c) {
    const T v = T(normal(rng));
    for (Index r = 0; r < m; ++r) mem(r, c) = v;
  }
  return mem;
}

/// BERT experiments: the memory tokens are the last m rows of the word embeddings.
template <class T>
Tensor<T> vocabulary_memory(const Decoder<T>& backbone, Index m) {
  const Index vocab = backbone.embed.weight.rows();
  check(m >= 0 && m <= vocab, "rmt::vocabulary_memory", "memory_tokens must be in [0, ", vocab, "], got ", m);
  return Tensor<T>::from_view(backbone.embed.weight.view().middle_rows(vocab - m, m));
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
