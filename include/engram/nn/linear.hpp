// Linear: y = x W^T + b with a PyTorch-layout weight [out, in], and its backward; the weight may be
// stored in a compressed inference format (bf16, f16, q8, q4: core/weights.hpp) instead of f32.
#pragma once

#include <string_view>
#include <type_traits>

#include "engram/core/flops.hpp"
#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"
#include "engram/nn/gradients.hpp"

ENGRAM_NAMESPACE_BEGIN

template <class T>
struct Linear {
  Tensor<T> weight;  ///< [out, in]; empty once compress()ed
  Tensor<T> bias;    ///< [out], or empty for no bias (always in T)
  /// The weight [out, in] in a compressed format after compress() (empty while the weight is f32).
  CompressedMatrix compressed;

  Linear() = default;
  /// A zero weight (lazily zeroed: a loader that keeps a checkpoint's rows in place, hf::LoadOptions,
  /// never makes it resident) and bias.
  Linear(Index in, Index out, bool with_bias)
      : weight(Tensor<T>::lazily_zeroed({out, in})), bias(with_bias ? Tensor<T>({out}) : Tensor<T>()) {}

  Index in() const { return compressed.empty() ? weight.cols() : compressed.cols(); }
  Index out() const { return compressed.empty() ? weight.rows() : compressed.rows(); }
  bool has_bias() const { return !bias.empty(); }
  /// How the weight is stored.
  WeightFormat format() const { return compressed.empty() ? WeightFormat::f32 : compressed.format(); }
  /// Bytes a product streams from the weight (the stored format's, padding included).
  std::size_t weight_bytes() const { return compressed.empty() ? std::size_t(weight.numel()) * sizeof(T) : compressed.bytes(); }

  /// Stores the weight in `format` and frees the f32 copy (f32: nothing changes). From then on the
  /// layer is for inference: products accumulate in fp32 from the stored weights, backward() is an
  /// Error. Needs T = float; `name` is the parameter named in errors (a non-finite weight, a value
  /// the format cannot hold).
  void compress(WeightFormat format, std::string_view name = "weight") {
    if (format == WeightFormat::f32) return;
    if (compressed.in_place() && compressed.format() == format) return;  // adopted rows of a mapped checkpoint
    check(compressed.empty(), "Linear", name, " is already stored as ", format_name(this->format()));
    if constexpr (std::is_same_v<T, float>) {
      compressed = CompressedMatrix::quantize(weight.view(), format, name);
      weight = Tensor<T>();
    } else {
      fail("Linear", name, ": compressed weights (", format_name(format), ") need float layers, this one computes in double");
    }
  }

  /// Uses `m` ([out, in], e.g. a mapped checkpoint's bf16 rows, CompressedMatrix::external) as the
  /// weight and frees the f32 copy; a later compress() to m's format keeps it.
  void adopt(CompressedMatrix m, std::string_view name = "weight") {
    check(compressed.empty(), "Linear", name, " is already stored as ", format_name(format()));
    check(m.rows() == out() && m.cols() == in(), "Linear", name, ": expected a [", out(), ", ", in(), "] weight, got [", m.rows(), ", ",
          m.cols(), "]");
    if constexpr (std::is_same_v<T, float>) {
      compressed = std::move(m);
      weight = Tensor<T>();
    } else {
      fail("Linear", name, ": compressed weights (", format_name(m.format()), ") need float layers, this one computes in double");
    }
  }

  /// y [T, out] = x [T, in] W^T + b; FLOPs go to `category` of `flops` when given.
  void forward(ConstView<T> x, View<T> y, FlopCounter* flops = nullptr, FlopCategory category = FlopCategory::projections) const {
    check_shape(x, -1, in(), "Linear", "input");
    if constexpr (std::is_same_v<T, float>) {
      if (!compressed.empty()) {
        matmul_nt(x, compressed.view(), y);  // the weight-format product (core/weight_gemm.hpp)
      } else {
        matmul_nt<T>(x, weight.view(), y);
      }
    } else {
      matmul_nt<T>(x, weight.view(), y);
    }
    if (has_bias())
      for (Index r = 0; r < y.rows(); ++r) simd::add(y.row(r), bias.data(), y.row(r), out());
    if (flops) flops->add(category, flops::gemm(x.rows(), out(), in()));
  }

  /// Backward of forward(x): dx [T, in] = dy W (dx += with `accumulate`; an empty dx skips it) and,
  /// for the parameters `grads` trains, dW += dy^T x and db += the column sums of dy.
  void backward(ConstView<T> x, ConstView<T> dy, View<T> dx, Gradients<T>* grads, bool accumulate = false,
                FlopCounter* flops = nullptr, FlopCategory category = FlopCategory::projections) const {
    check(compressed.empty(), "Linear::backward", "the weight is stored as ", format_name(format()),
          ": compressed weights are for inference (train with f32 weights)");
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
