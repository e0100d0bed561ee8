// Depthwise causal convolution (kernel 4 in TTT's Mamba backbone) with a decode history, and the
// block-level conv branch as a SequenceLayer with its own state.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>

#include "engram/core/flops.hpp"
#include "engram/core/simd.hpp"
#include "engram/nn/layer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

namespace detail {
// y[i] += a[i] * b[i].
template <class T>
void multiply_add(const T* a, const T* b, T* y, Index n) {
  constexpr Index W = simd::width<T>;
  Index i = 0;
  for (; i + W <= n; i += W) simd::store(y + i, xsimd::fma(simd::load(a + i), simd::load(b + i), simd::load(y + i)));
  for (; i < n; ++i) y[i] += a[i] * b[i];
}
}  // namespace detail

/// Per-channel causal convolution: y[t, c] = bias[c] + sum_k weight[k, c] * u[t - (K - 1) + k, c],
/// with inputs before the start of the sequence taken from a history (zeros for a fresh sequence).
template <class T>
struct DepthwiseConv {
  Tensor<T> weight;  ///< [K, C] (PyTorch Conv1d stores [C, 1, K]: transposed when loaded)
  Tensor<T> bias;    ///< [C]

  DepthwiseConv() = default;
  DepthwiseConv(Index channels, Index kernel) : weight({kernel, channels}), bias({channels}) {}
  Index kernel() const { return weight.rows(); }
  Index channels() const { return weight.cols(); }

  /// y [n, C] from u [n, C] and history [K, C], the K inputs before u, oldest first (row K - 1 is
  /// the newest; row 0 is kept only so the state matches the official cache). y must not alias u.
  void forward(ConstView<T> u, ConstView<T> history, View<T> y, FlopCounter* flops = nullptr) const {
    const Index n = u.rows(), C = channels(), K = kernel();
    check_shape(u, -1, C, "ttt::DepthwiseConv", "input");
    check_shape(history, K, C, "ttt::DepthwiseConv", "history");
    check_shape(y, n, C, "ttt::DepthwiseConv", "output");
    ENGRAM_ASSERT(y.data() != u.data());
    for (Index t = 0; t < n; ++t) {
      T* out = y.row(t);
      std::copy_n(bias.data(), C, out);
      for (Index k = 0; k < K; ++k) {
        const Index src = t - (K - 1) + k;  // < 0: from the history (row K + src)
        detail::multiply_add(weight.row(k), src >= 0 ? u.row(src) : history.row(K + src), out, C);
      }
    }
    if (flops) flops->add(FlopCategory::other, 2.0 * double(n) * double(K) * double(C));
  }

  /// Backward of forward(u, zero history, y): du [n, C] = dL/du (du += with `accumulate`),
  /// dweight[k, c] += sum_t dy[t, c] u[t - (K - 1) + k, c] and dbias += sum_t dy when `grads` trains
  /// them. du must not alias dy.
  void backward(ConstView<T> u, ConstView<T> dy, View<T> du, Gradients<T>* grads, bool accumulate = false,
                FlopCounter* flops = nullptr) const {
    const Index n = u.rows(), C = channels(), K = kernel();
    check_shape(u, -1, C, "ttt::DepthwiseConv::backward", "input");
    check_shape(dy, n, C, "ttt::DepthwiseConv::backward", "output gradient");
    check_shape(du, n, C, "ttt::DepthwiseConv::backward", "input gradient");
    ENGRAM_ASSERT(du.data() != dy.data());
    // du[s] = sum_k w[k] dy[s + (K - 1) - k] over the outputs that read input s.
    for (Index s = 0; s < n; ++s) {
      T* out = du.row(s);
      if (!accumulate) std::fill_n(out, C, T(0));
      for (Index k = 0; k < K; ++k) {
        const Index t = s + (K - 1) - k;
        if (t < n) detail::multiply_add(weight.row(k), dy.row(t), out, C);
      }
    }
    if (Tensor<T>* gw = grads ? grads->find(weight) : nullptr)
      for (Index k = 0; k < K; ++k)
        for (Index t = std::max<Index>(0, (K - 1) - k); t < n; ++t) detail::multiply_add(dy.row(t), u.row(t - (K - 1) + k), gw->row(k), C);
    if (Tensor<T>* gb = grads ? grads->find(bias) : nullptr)
      for (Index t = 0; t < n; ++t) simd::add(gb->data(), dy.row(t), gb->data(), C);
    if (flops) flops->add(FlopCategory::other, 4.0 * double(n) * double(K) * double(C));
  }
};

/// history [K, C] <- the last K rows of (history ++ u), oldest first.
template <class T>
void push_history(View<T> history, ConstView<T> u) {
  const Index K = history.rows(), C = history.cols(), n = u.rows();
  check_shape(u, -1, C, "ttt::push_history", "input");
  if (n >= K) {
    for (Index r = 0; r < K; ++r) std::copy_n(u.row(n - K + r), C, history.row(r));
    return;
  }
  for (Index r = 0; r + n < K; ++r) std::copy_n(history.row(r + n), C, history.row(r));
  for (Index r = 0; r < n; ++r) std::copy_n(u.row(r), C, history.row(K - n + r));
}

/// The history of a CausalConv branch.
template <class T>
class ConvState final : public LayerState<T> {
 public:
  explicit ConvState(Tensor<T> h) : history(std::move(h)) {}
  std::unique_ptr<LayerState<T>> clone() const override { return std::make_unique<ConvState>(history.copy()); }
  std::size_t bytes() const override { return history.bytes(); }
  Tensor<T> history;  ///< [K, C]: the last K inputs, oldest first
};

/// The Mamba backbone's block-level conv branch (ttt-lm-pytorch `conv.conv`; its RMSNorm is the
/// branch norm): y = DepthwiseConv(x), no activation.
template <class T>
class CausalConv final : public SequenceLayer<T> {
 public:
  DepthwiseConv<T> conv;

  CausalConv() = default;
  CausalConv(Index channels, Index kernel) : conv(channels, kernel) {}

  std::string_view kind() const override { return "causal_conv"; }
  Index dim() const override { return conv.channels(); }
  std::unique_ptr<LayerState<T>> make_state() const override {
    return std::make_unique<ConvState<T>>(Tensor<T>({conv.kernel(), conv.channels()}));
  }
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) override {
    f("conv.weight", conv.weight);
    f("conv.bias", conv.bias);
  }
  void forward(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx) const override {
    auto* s = dynamic_cast<ConvState<T>*>(state);
    check(s != nullptr, "ttt::CausalConv", "needs its ConvState (from make_state())");
    check(x.rows() > 0, "ttt::CausalConv", "empty input: a step needs at least one token");
    conv.forward(x, s->history.view(), y, ctx.flops);
    push_history<T>(s->history.view(), x);
  }

  /// Each sequence from a zero history; saves the input x [N, C].
  void forward_train(ConstView<T> x, View<T> y, TrainContext<T>& ctx) const override {
    const Index N = x.rows(), C = conv.channels();
    check(ctx.tape != nullptr && ctx.workspace != nullptr, "ttt::CausalConv::forward_train", "TrainContext needs a tape and a workspace");
    check(ctx.seq_len > 0 && N == ctx.n_seqs * ctx.seq_len, "ttt::CausalConv::forward_train", "expected ", ctx.n_seqs,
          " sequences of ", ctx.seq_len, " rows, got ", N, " rows");
    copy<T>(x, ctx.tape->push(N, C));
    View<T> history = ctx.workspace->get(3, conv.kernel(), C);
    for (Index r = 0; r < history.rows(); ++r) std::fill_n(history.row(r), C, T(0));
    for (Index s = 0; s < ctx.n_seqs; ++s) conv.forward(ctx.sequence(x, s), history, ctx.sequence(y, s), ctx.flops);
  }
  void backward(ConstView<T> dy, View<T> dx, TrainContext<T>& ctx) const override {
    const ConstView<T> x = ctx.tape->pop(dy.rows(), conv.channels());
    for (Index s = 0; s < ctx.n_seqs; ++s)
      conv.backward(ctx.sequence(x, s), ctx.sequence(dy, s), ctx.sequence(dx, s), ctx.grads, false, ctx.flops);
  }
};

}  // namespace ttt
ENGRAM_NAMESPACE_END
