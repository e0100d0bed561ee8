// Sequence classification readout: tanh pooler on the first ([CLS]) hidden state, then a linear
// layer; its training forward and backward.
#pragma once

#include <functional>
#include <string>

#include "engram/nn/linear.hpp"
#include "engram/nn/tape.hpp"

ENGRAM_NAMESPACE_BEGIN

template <class T>
struct SequenceClassifier {
  Linear<T> pooler;      ///< [d, d] with bias
  Linear<T> classifier;  ///< [n_labels, d] with bias

  Index n_labels() const { return classifier.out(); }
  bool empty() const { return classifier.weight.empty(); }

  /// Calls f(name, tensor) for the head's parameters: pooler.weight/bias, classifier.weight/bias.
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) {
    for (auto [name, lin] : {std::pair<const char*, Linear<T>*>{"pooler", &pooler}, {"classifier", &classifier}}) {
      if (!lin->weight.empty()) f(std::string(name) + ".weight", lin->weight);
      if (!lin->bias.empty()) f(std::string(name) + ".bias", lin->bias);
    }
  }

  /// logits [1, n_labels] from the hidden state of the first token, cls [1, d].
  Tensor<T> forward(ConstView<T> cls, FlopCounter* flops = nullptr) const {
    check(!empty(), "SequenceClassifier", "the model has no classification head");
    Tensor<T> pooled({1, pooler.out()}), out({1, classifier.out()});
    pooler.forward(cls, pooled.view(), flops, FlopCategory::other);
    for (Index c = 0; c < pooled.cols(); ++c) pooled(0, c) = std::tanh(pooled(0, c));
    classifier.forward(pooled.view(), out.view(), flops, FlopCategory::other);
    return out;
  }

  /// Training forward of n first-token rows cls [n, d]: logits [n, labels]. Saves cls and the
  /// pooled activations on the tape.
  void forward_train(ConstView<T> cls, View<T> logits, Tape<T>& tape, FlopCounter* flops = nullptr) const {
    check(!empty(), "SequenceClassifier", "the model has no classification head");
    copy<T>(cls, tape.push(cls.rows(), cls.cols()));
    View<T> pooled = tape.push(cls.rows(), pooler.out());
    pooler.forward(cls, pooled, flops, FlopCategory::other);
    for (Index r = 0; r < pooled.rows(); ++r)
      for (Index c = 0; c < pooled.cols(); ++c) pooled(r, c) = std::tanh(pooled(r, c));
    classifier.forward(pooled, logits, flops, FlopCategory::other);
  }

  /// Backward of forward_train: dcls [n, d] = dL/dcls from dlogits [n, labels]; head gradients added.
  void backward(ConstView<T> dlogits, View<T> dcls, Tape<T>& tape, Gradients<T>* grads, FlopCounter* flops = nullptr) const {
    const Index n = dlogits.rows();
    const ConstView<T> pooled = tape.pop(n, pooler.out());
    const ConstView<T> cls = tape.pop(n, pooler.in());
    Tensor<T> d_pooled({n, pooler.out()});
    classifier.backward(pooled, dlogits, d_pooled.view(), grads, false, flops, FlopCategory::other);
    for (Index r = 0; r < n; ++r)  // tanh' = 1 - tanh^2, from the saved output
      for (Index c = 0; c < pooled.cols(); ++c) d_pooled(r, c) *= T(1) - pooled(r, c) * pooled(r, c);
    pooler.backward(cls, d_pooled.view(), dcls, grads, false, flops, FlopCategory::other);
  }
};

ENGRAM_NAMESPACE_END
