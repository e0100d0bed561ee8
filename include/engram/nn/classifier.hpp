// Sequence classification readout: tanh pooler on the first ([CLS]) hidden state, then a linear layer.
#pragma once

#include "engram/nn/linear.hpp"

ENGRAM_NAMESPACE_BEGIN

template <class T>
struct SequenceClassifier {
  Linear<T> pooler;      ///< [d, d] with bias
  Linear<T> classifier;  ///< [n_labels, d] with bias

  Index n_labels() const { return classifier.out(); }
  bool empty() const { return classifier.weight.empty(); }

  /// logits [1, n_labels] from the hidden state of the first token, cls [1, d].
  Tensor<T> forward(ConstView<T> cls, FlopCounter* flops = nullptr) const {
    check(!empty(), "SequenceClassifier", "the model has no classification head");
    Tensor<T> pooled({1, pooler.out()}), out({1, classifier.out()});
    pooler.forward(cls, pooled.view(), flops, FlopCategory::other);
    for (Index c = 0; c < pooled.cols(); ++c) pooled(0, c) = std::tanh(pooled(0, c));
    classifier.forward(pooled.view(), out.view(), flops, FlopCategory::other);
    return out;
  }
};

ENGRAM_NAMESPACE_END
