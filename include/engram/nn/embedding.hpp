// Embedding: token ids to rows of a [vocab, d_model] table.
#pragma once

#include <span>

#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

template <class T>
struct Embedding {
  Tensor<T> weight;  ///< [vocab, d_model]

  Index vocab() const { return weight.rows(); }
  Index dim() const { return weight.cols(); }

  /// out [n, d_model] = rows of the table; throws Error for an id outside [0, vocab).
  void lookup(std::span<const std::int32_t> ids, View<T> out) const {
    check_shape(out, Index(ids.size()), dim(), "Embedding", "output");
    for (std::size_t i = 0; i < ids.size(); ++i) {
      check(ids[i] >= 0 && ids[i] < vocab(), "Embedding", "token id ", ids[i], " at index ", i, " outside the vocabulary [0, ", vocab(), ")");
      std::copy_n(weight.row(ids[i]), dim(), out.row(Index(i)));
    }
  }
};

ENGRAM_NAMESPACE_END
