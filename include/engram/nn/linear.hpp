// Linear: y = x W^T + b with a PyTorch-layout weight [out, in], and its backward.
#pragma once

#include "engram/core/flops.hpp"
#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"
#include "engram/nn/gradients.hpp"

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

  /// Backward of forward(x): dx [T, in] = dy W (dx += with `accumulate`; an empty dx skips it) and,
  /// for the parameters `grads` trains, dW += dy^T x and db += the column sums of dy.
  void backward(ConstView<T> x, ConstView<T> dy, View<T> dx, Gradients<T>* grads, bool accumulate = false,
                FlopCounter* flops = nullptr, FlopCategory category = FlopCategory::projections) const {
    check_shape(x, -1, in(), "Linear::backward", "input");
    check_shape(dy, x.rows(), out(), "Linear::backward", "output gradient");
    if (!dx.empty()) {
      check_shape(dx, x.rows(), in(), "Linear::backward", "input gradient");
      gemm<T>(dy, Trans::no, weight.view(), Trans::no, dx, T(1), accumulate ? T(1) : T(0));
      if (flops) flops->add(category, flops::gemm(x.rows(), in(), out()));
    }
    if (Tensor<T>* gw = grads ? grads->find(weight) : nullptr) {
      gemm<T>(dy, Trans::yes, x, Trans::no, gw->view(), T(1), T(1));
      if (flops) flops->add(category, flops::gemm(out(), in(), x.rows()));
    }
    if (Tensor<T>* gb = has_bias() && grads ? grads->find(bias) : nullptr)
      for (Index r = 0; r < dy.rows(); ++r) simd::add(gb->data(), dy.row(r), gb->data(), out());
  }
};

ENGRAM_NAMESPACE_END
