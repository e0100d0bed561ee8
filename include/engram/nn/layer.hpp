// SequenceLayer: the interface of what a residual branch computes (attention, MLP, TTT, convs),
// with the per-sequence state, step context and scratch workspace they share.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <span>
#include <string_view>

#include "engram/core/attention.hpp"
#include "engram/core/flops.hpp"
#include "engram/core/ops.hpp"
#include "engram/nn/cache_policy.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Per-sequence state of one layer (a KV cache, TTT inner weights, a convolution history).
template <class T>
class LayerState {
 public:
  virtual ~LayerState() = default;
  virtual std::unique_ptr<LayerState> clone() const = 0;
  virtual std::size_t bytes() const = 0;
  /// The KV cache when this is an attention layer's state.
  virtual LayerCache<T>* kv_cache() { return nullptr; }
};

/// Reusable scratch matrices owned by a sequence state, so steps do not allocate once warm.
/// Slot ownership: 0-1 block/decoder, 2-5 the layer running, 6-7 its helpers.
template <class T>
class Workspace {
 public:
  static constexpr int kSlots = 8;
  /// A [rows, cols] view of slot `slot` (contents unspecified).
  View<T> get(int slot, Index rows, Index cols) {
    Tensor<T>& t = slots_.at(std::size_t(slot));
    t.reshape_rows(rows, cols);
    return t.view();
  }
  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& t : slots_) b += t.bytes();
    return b;
  }

 private:
  std::array<Tensor<T>, kSlots> slots_;
};

/// What a layer needs to know about the step beyond its input.
template <class T>
struct StepContext {
  std::span<const std::int64_t> positions;  ///< absolute positions of the step's rows
  const RopeTable<T>* rope = nullptr;       ///< rotation table for those positions (decoders with RoPE)
  FlopCounter* flops = nullptr;
  Workspace<T>* workspace = nullptr;
  Index tokens_seen = 0;                    ///< tokens before this step
  // Attention: the mask of this step (default causal), the cache policy and which attention layer this is.
  MaskKind mask = MaskKind::causal;
  ConstView<std::uint8_t> custom_mask;      ///< [T, keys] for MaskKind::custom
  const CachePolicy<T>* policy = nullptr;
  PolicyState* policy_state = nullptr;
  Index attention_layer = 0;       ///< index of the attention layer running, among attention layers
  Index attention_layers_run = 0;  ///< counter the blocks advance
};

/// A computation over the next T tokens of a sequence: y [T, d] = f(x [T, d]), possibly with state
/// carried between calls (so a sequence can be fed in any chunks). Weights are immutable.
template <class T>
class SequenceLayer {
 public:
  virtual ~SequenceLayer() = default;
  virtual std::string_view kind() const = 0;
  virtual Index dim() const = 0;
  /// Fresh per-sequence state, or null for a stateless layer.
  virtual std::unique_ptr<LayerState<T>> make_state() const { return nullptr; }
  virtual void forward(ConstView<T> x, View<T> y, LayerState<T>* state, StepContext<T>& ctx) const = 0;
  /// Calls f(name, tensor) for every parameter of the layer.
  virtual void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) = 0;
};

/// Visits a Linear's weight and bias under `prefix`.
template <class T, class L>
void visit_linear(const std::string& prefix, L& linear, const std::function<void(const std::string&, Tensor<T>&)>& f) {
  f(prefix + ".weight", linear.weight);
  if (!linear.bias.empty()) f(prefix + ".bias", linear.bias);
}

ENGRAM_NAMESPACE_END
