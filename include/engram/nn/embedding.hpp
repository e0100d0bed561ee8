// Embedding: token ids to rows of a [vocab, d_model] table, and the scatter-add of its backward.
#pragma once

#include <span>

#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"
#include "engram/nn/gradients.hpp"

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

  /// Backward of lookup(ids): adds row i of dout [n, d_model] to the gradient row of ids[i] (a
  /// no-op when `grads` does not train the table).
  void backward(std::span<const std::int32_t> ids, ConstView<T> dout, Gradients<T>* grads) const {
    check_shape(dout, Index(ids.size()), dim(), "Embedding::backward", "output gradient");
    Tensor<T>* g = grads ? grads->find(weight) : nullptr;
    if (!g) return;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      check(ids[i] >= 0 && ids[i] < vocab(), "Embedding::backward", "token id ", ids[i], " at index ", i, " outside the vocabulary [0, ", vocab(), ")");
      simd::add(g->row(ids[i]), dout.row(Index(i)), g->row(ids[i]), dim());
    }
  }
};

ENGRAM_NAMESPACE_END
