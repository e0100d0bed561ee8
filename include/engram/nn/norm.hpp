// Norm: RMSNorm or LayerNorm over the last dimension, with its learned scale (and shift).
#pragma once

#include "engram/core/ops.hpp"
#include "engram/nn/config.hpp"

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
};

ENGRAM_NAMESPACE_END
