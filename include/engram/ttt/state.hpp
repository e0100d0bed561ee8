// The decode state of a TTT layer: inner weights at the start of the current mini-batch, the
// lr-weighted gradient sums of its pending tokens, the position, and the shared q/k conv history.
#pragma once

#include <memory>

#include "engram/nn/layer.hpp"
#include "engram/ttt/inner.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// One sequence's TTT state (ttt-lm-pytorch TTTCache for one layer). Prefill and decode share it, so
/// a sequence may be fed in any pieces: the dual form runs on whole aligned mini-batches, the primal
/// form on the rest, and both leave the same state.
template <class T>
class State final : public LayerState<T> {
 public:
  Tensor<T> W1, b1, W2, b2;  ///< [H, d, F], [H, F], [H, F, d], [H, d]: weights at the mini-batch start
  Tensor<T> W1_grad, b1_grad, W2_grad, b2_grad;  ///< sum_j lr_j dl_j/dW of the pending tokens (no s_i)
  Tensor<T> conv_qk;  ///< share_qk: [K, C] the last K rows of xqk (conv_q/conv_k input), oldest first
  Index position = 0;  ///< tokens this layer has seen; position % b is the next token's slot

  State() = default;
  State copy() const {
    State s;
    s.W1 = W1.copy(), s.b1 = b1.copy(), s.W2 = W2.copy(), s.b2 = b2.copy();
    s.W1_grad = W1_grad.copy(), s.b1_grad = b1_grad.copy(), s.W2_grad = W2_grad.copy(), s.b2_grad = b2_grad.copy();
    s.conv_qk = conv_qk.copy();
    s.position = position;
    return s;
  }
  std::unique_ptr<LayerState<T>> clone() const override { return std::make_unique<State>(copy()); }
  std::size_t bytes() const override {
    return W1.bytes() + b1.bytes() + W2.bytes() + b2.bytes() + W1_grad.bytes() + b1_grad.bytes() + W2_grad.bytes() +
           b2_grad.bytes() + conv_qk.bytes();
  }
  Index n_heads() const { return b1.rows(); }

  /// Head h's weights at the start of the current mini-batch.
  HeadParams<T> weights(Index h) { return head(h, W1, b1, W2, b2); }
  /// Head h's pending gradient sums.
  HeadParams<T> grads(Index h) { return head(h, W1_grad, b1_grad, W2_grad, b2_grad); }

 private:
  static HeadParams<T> head(Index h, Tensor<T>& w1, Tensor<T>& bias1, Tensor<T>& w2, Tensor<T>& bias2) {
    HeadParams<T> p{w1.mat(h), bias1.view().middle_rows(h, 1), {}, {}};
    if (!w2.empty()) {
      p.W2 = w2.mat(h);
      p.b2 = bias2.view().middle_rows(h, 1);
    }
    return p;
  }
};

}  // namespace ttt
ENGRAM_NAMESPACE_END
