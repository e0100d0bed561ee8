// Data-parallel training's two pieces of arithmetic over a Collective: the bucketed sum of a
// Gradients set over the ranks (the all-reduce), and the fingerprint that checks every rank holds
// the same weights.
#pragma once

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "engram/nn/gradients.hpp"
#include "engram/train/collective.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// Sums a Gradients set over the ranks of a Collective, in place. The entries' values (each row's
/// `cols`, never the padding) are packed in the set's fixed order into a bucket of at most
/// `bucket_elems` values, summed with one collective call per bucket and unpacked; a tensor larger
/// than a bucket spans several. The same order on every rank, so every rank sums the same buckets.
///
/// Buckets bound the extra memory (one bucket, not a second copy of the gradients) while keeping
/// each call large: 2^20 floats (4 MB) take 0.3 ms even at 100 Gb/s, against a few microseconds of
/// latency per call. The sum is not overlapped with the backward pass: that would need the
/// backward to hand over each layer's gradients once final (a hook in nn/) and MPI to progress a
/// non-blocking all-reduce while the rank computes, which Open MPI does only inside MPI calls;
/// bench_mpi measures both the all-reduce's share of a step (the most an overlap could save) and
/// whether an MPI_Iallreduce moves during compute.
template <class T>
class GradientReducer {
 public:
  static constexpr Index kDefaultBucket = Index(1) << 20;

  explicit GradientReducer(Index bucket_elems = kDefaultBucket) : bucket_elems_(bucket_elems) {
    check(bucket_elems >= 1, "train::GradientReducer", "bucket size must be >= 1 value, got ", bucket_elems);
  }

  /// Collective: replaces every gradient by its sum over the ranks.
  void sum(Gradients<T>& g, Collective& c) {
    const auto t0 = std::chrono::steady_clock::now();
    Index total = 0;
    for (const auto& e : g.entries()) total += e.grad.numel();
    bucket_.resize(std::size_t(std::min(total, bucket_elems_)));
    pieces_.clear();
    Index fill = 0;
    auto flush = [&] {
      c.sum(std::span<T>(bucket_.data(), std::size_t(fill)));
      const T* src = bucket_.data();
      for (const auto& [dst, n] : pieces_) std::copy_n(src, n, dst), src += n;
      pieces_.clear();
      fill = 0;
    };
    for (auto& e : g.entries())
      for (Index r = 0; r < e.grad.rows(); ++r) {
        T* row = e.grad.row(r);
        for (Index done = 0, cols = e.grad.cols(); done < cols;) {
          const Index n = std::min(cols - done, Index(bucket_.size()) - fill);
          std::copy_n(row + done, n, bucket_.data() + fill);
          pieces_.emplace_back(row + done, n);
          fill += n, done += n;
          if (fill == Index(bucket_.size())) flush();
        }
      }
    if (fill > 0) flush();
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Index bucket_elems() const { return bucket_elems_; }
  /// Wall time spent in sum() so far (packing, the collective calls, unpacking).
  double seconds() const { return seconds_; }

 private:
  Index bucket_elems_;
  std::vector<T> bucket_;
  std::vector<std::pair<T*, Index>> pieces_;
  double seconds_ = 0;
};

/// Fingerprint (train/collective.hpp) of the parameters a Gradients set trains: their values,
/// row by row without padding, in the set's order.
template <class T>
std::uint64_t parameter_fingerprint(const Gradients<T>& g) {
  std::uint64_t h = fingerprint(nullptr, 0);
  for (const auto& e : g.entries())
    for (Index r = 0; r < e.param->rows(); ++r) h = fingerprint(e.param->row(r), sizeof(T) * std::size_t(e.param->cols()), h);
  return h;
}

}  // namespace train
ENGRAM_NAMESPACE_END
