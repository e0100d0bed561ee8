// Norm: RMSNorm or LayerNorm over the last dimension, with its learned scale (and shift), and its backward.
#pragma once

#include "engram/core/ops.hpp"
#include "engram/core/ops_backward.hpp"
#include "engram/nn/config.hpp"
#include "engram/nn/gradients.hpp"

ENGRAM_NAMESPACE_BEGIN

template <class T>
struct Norm {
  NormKind kind = NormKind::rms;
  Tensor<T> weight;  ///< [d]
  Tensor<T> bias;    ///< [d] (LayerNorm only; may be empty)
  T eps = T(1e-5);

  Norm() = default;
  Norm(NormKind k, Index d, double e) : kind(k), weight({d}), bias(k == NormKind::layer ? Tensor<T>({d}) : Tensor<T>()), eps(T(e)) {
    weight.fill(T(1));
  }
  Index dim() const { return weight.cols(); }

  /// y = norm(x) row by row; y may alias x.
  void forward(ConstView<T> x, View<T> y) const {
    check_shape(x, -1, dim(), "Norm", "input");
    if (kind == NormKind::rms) rms_norm<T>(x, weight.data(), eps, y);
    else layer_norm<T>(x, weight.data(), bias.empty() ? nullptr : bias.data(), eps, y);
  }

  /// Backward of forward(x): dx = dL/dx from dy (dx += with `accumulate`; dx must not alias dy);
  /// the scale (and shift) gradients are added when `grads` trains them.
  void backward(ConstView<T> x, ConstView<T> dy, View<T> dx, Gradients<T>* grads, bool accumulate = false) const {
    check_shape(x, -1, dim(), "Norm::backward", "input");
    Tensor<T>* gw = grads ? grads->find(weight) : nullptr;
    if (kind == NormKind::rms) {
      rms_norm_backward<T>(x, weight.data(), eps, dy, dx, gw ? gw->data() : nullptr, accumulate);
    } else {
      Tensor<T>* gb = grads && !bias.empty() ? grads->find(bias) : nullptr;
      layer_norm_backward<T>(x, weight.data(), eps, dy, dx, gw ? gw->data() : nullptr, gb ? gb->data() : nullptr, accumulate);
    }
  }
};

ENGRAM_NAMESPACE_END
