// Feed-forward branch: plain (down(act(up x))) or gated (down(act(gate x) * up x), SwiGLU).
#pragma once

#include "engram/nn/config.hpp"
#include "engram/nn/layer.hpp"
#include "engram/nn/linear.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Applies an activation in place.
template <class T>
void activate(Activation a, View<T> x) {
  switch (a) {
    case Activation::gelu_tanh: return gelu_tanh<T>(x);
    case Activation::gelu_erf: return gelu_erf<T>(x);
    case Activation::silu: return silu<T>(x);
    case Activation::relu:
      for (Index r = 0; r < x.rows(); ++r)
        for (Index c = 0; c < x.cols(); ++c) x(r, c) = std::max(x(r, c), T(0));
      return;
  }
}

template <class T>
class Mlp final : public SequenceLayer<T> {
 public:
  MlpKind type = MlpKind::gated;
  Activation activation = Activation::silu;
  /// plain: [d_ff, d]; gated: gate and up fused as [2 * d_ff, d] (rows 0..d_ff-1 gate), one GEMM.
  Linear<T> up;
  Linear<T> down;  ///< [d, d_ff]

  Mlp() = default;
  Mlp(MlpKind k, Activation a, Index d, Index d_ff, bool bias)
      : type(k), activation(a), up(d, k == MlpKind::gated ? 2 * d_ff : d_ff, bias), down(d_ff, d, bias) {}

  std::string_view kind() const override { return "mlp"; }
  Index dim() const override { return down.out(); }
  Index d_ff() const { return down.in(); }

  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) override {
    visit_linear<T>("up", up, f);
    visit_linear<T>("down", down, f);
  }

  void forward(ConstView<T> x, View<T> y, LayerState<T>*, StepContext<T>& ctx) const override {
    const Index n = x.rows(), f = d_ff();
    View<T> h = ctx.workspace->get(2, n, up.out());
    up.forward(x, h, ctx.flops, FlopCategory::mlp);
    View<T> act = h.middle_cols(0, f);
    activate(activation, act);
    if (type == MlpKind::gated)
      for (Index r = 0; r < n; ++r) simd::mul(act.row(r), h.row(r) + f, act.row(r), f);
    down.forward(act, y, ctx.flops, FlopCategory::mlp);
  }
};

ENGRAM_NAMESPACE_END
