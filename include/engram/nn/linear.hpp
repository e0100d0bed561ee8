// Linear: y = x W^T + b with a PyTorch-layout weight [out, in].
#pragma once

#include "engram/core/flops.hpp"
#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"

ENGRAM_NAMESPACE_BEGIN

template <class T>
struct Linear {
  Tensor<T> weight;  ///< [out, in]
  Tensor<T> bias;    ///< [out], or empty for no bias

  Linear() = default;
  Linear(Index in, Index out, bool with_bias) : weight({out, in}), bias(with_bias ? Tensor<T>({out}) : Tensor<T>()) {}

  Index in() const { return weight.cols(); }
  Index out() const { return weight.rows(); }
  bool has_bias() const { return !bias.empty(); }

  /// y [T, out] = x [T, in] W^T + b; FLOPs go to `category` of `flops` when given.
  void forward(ConstView<T> x, View<T> y, FlopCounter* flops = nullptr, FlopCategory category = FlopCategory::projections) const {
    check_shape(x, -1, in(), "Linear", "input");
    matmul_nt<T>(x, weight.view(), y);
    if (has_bias())
      for (Index r = 0; r < y.rows(); ++r) simd::add(y.row(r), bias.data(), y.row(r), out());
    if (flops) flops->add(category, flops::gemm(x.rows(), out(), in()));
  }
};

ENGRAM_NAMESPACE_END
