// Feed-forward branch: plain (down(act(up x))) or gated (down(act(gate x) * up x), SwiGLU), with its
// training forward and backward.
#pragma once

#include "engram/core/ops_backward.hpp"
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

/// Backward of activate(): dx = dy * act'(x) for the pre-activation x (dx may alias dy).
template <class T>
void activation_backward(Activation a, ConstView<T> x, ConstView<T> dy, View<T> dx) {
  switch (a) {
    case Activation::gelu_tanh: return gelu_tanh_backward<T>(x, dy, dx);
    case Activation::gelu_erf: return gelu_erf_backward<T>(x, dy, dx);
    case Activation::silu: return silu_backward<T>(x, dy, dx);
    case Activation::relu: return relu_backward<T>(x, dy, dx);
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
  void visit_linears(const std::function<void(const std::string&, Linear<T>&)>& f) override {
    f("up", up);
    f("down", down);
  }

  /// Row-wise: the whole batch in one pass (each weight streamed once for every sequence).
  void forward_batch(ConstView<T> x, View<T> y, std::span<LayerState<T>* const>, std::span<StepContext<T>* const> ctxs) const override {
    batched_rows<T>(ctxs, [&](StepContext<T>& ctx) { forward(x, y, nullptr, ctx); });
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

  // Saved: the input x [n, d] and the up projection h [n, up.out] (pre-activation); the activation
  // is recomputed in backward (elementwise, cheaper than keeping [n, d_ff] more).
  void forward_train(ConstView<T> x, View<T> y, TrainContext<T>& ctx) const override {
    const Index n = x.rows(), f = d_ff();
    View<T> xs = ctx.tape->push(n, x.cols());
    copy<T>(x, xs);
    View<T> h = ctx.tape->push(n, up.out());
    up.forward(x, h, ctx.flops, FlopCategory::mlp);
    View<T> act = ctx.workspace->get(3, n, f);
    activation_of(h, act);
    down.forward(act, y, ctx.flops, FlopCategory::mlp);
  }

  void backward(ConstView<T> dy, View<T> dx, TrainContext<T>& ctx) const override {
    const Index n = dy.rows(), f = d_ff();
    const ConstView<T> h = ctx.tape->pop(n, up.out());
    const ConstView<T> xs = ctx.tape->pop(n, dx.cols());
    View<T> act = ctx.workspace->get(3, n, f);
    activation_of(h, act);
    View<T> d_act = ctx.workspace->get(4, n, f);  // dL/d(down's input)
    down.backward(act, dy, d_act, ctx.grads, false, ctx.flops, FlopCategory::mlp);
    View<T> dh = ctx.workspace->get(5, n, up.out());
    const ConstView<T> pre = h.middle_cols(0, f);
    if (type == MlpKind::gated) {
      // act = a(gate) * up: d up = d_act * a(gate), d gate = a'(gate) * (d_act * up).
      View<T> a_gate = ctx.workspace->get(6, n, f);
      copy<T>(pre, a_gate);
      activate(activation, a_gate);
      for (Index r = 0; r < n; ++r) {
        simd::mul(d_act.row(r), a_gate.row(r), dh.row(r) + f, f);
        simd::mul(d_act.row(r), h.row(r) + f, dh.row(r), f);
      }
      activation_backward<T>(activation, pre, dh.middle_cols(0, f), dh.middle_cols(0, f));
    } else {
      activation_backward<T>(activation, pre, d_act, dh);
    }
    up.backward(xs, dh, dx, ctx.grads, false, ctx.flops, FlopCategory::mlp);
  }

 private:
  // act [n, d_ff] = a(h[:, :d_ff]) (* h[:, d_ff:] when gated).
  void activation_of(ConstView<T> h, View<T> act) const {
    const Index f = d_ff();
    copy<T>(h.middle_cols(0, f), act);
    activate(activation, act);
    if (type == MlpKind::gated)
      for (Index r = 0; r < act.rows(); ++r) simd::mul(act.row(r), h.row(r) + f, act.row(r), f);
  }
};

ENGRAM_NAMESPACE_END
