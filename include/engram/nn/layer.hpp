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
#include "engram/nn/gradients.hpp"
#include "engram/nn/linear.hpp"
#include "engram/nn/tape.hpp"

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

/// Reusable scratch matrices owned by a sequence state (or a training step), so steps do not
/// allocate once warm. Slot ownership, inference: 0-1 block, 2-5 the layer running, 6-7 its
/// helpers (7: the decoder's embeddings). Training: 0-2 block, 3-9 the layer running, 10-11 its
/// helpers (the decoder's step buffers live outside the workspace).
template <class T>
class Workspace {
 public:
  static constexpr int kSlots = 12;
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

/// What a layer needs to know about a training step: where saved activations and gradients go, and
/// the batch layout. x has n_seqs * seq_len rows; sequence b is rows [b * seq_len, (b + 1) * seq_len),
/// each read from a fresh state (positions 0 .. seq_len - 1).
template <class T>
struct TrainContext {
  Tape<T>* tape = nullptr;            ///< activations saved by forward_train, popped by backward
  Gradients<T>* grads = nullptr;      ///< parameter gradients (+=); null or a frozen parameter: not computed
  Workspace<T>* workspace = nullptr;  ///< scratch (slots as Workspace documents)
  FlopCounter* flops = nullptr;
  Index n_seqs = 1;
  Index seq_len = 0;
  const RopeTable<T>* rope = nullptr;  ///< rotation table of positions 0 .. seq_len - 1 (RoPE decoders)
  MaskKind mask = MaskKind::causal;    ///< attention mask of every sequence
  ConstView<std::uint8_t> custom_mask; ///< [seq_len, seq_len] for MaskKind::custom (the same for every sequence)
  Index window = 0;                    ///< sliding-window attention (causal), 0: unlimited
  /// Gradient checkpointing: block l of a decoder keeps only its input and is recomputed during
  /// backward when checkpoint(l) is true (null: no block is).
  std::function<bool(Index block)> checkpoint;

  /// The gradient of `param`, or null when it is not trained.
  Tensor<T>* grad(const Tensor<T>& param) const { return grads ? grads->find(param) : nullptr; }
  /// Rows of sequence b in a [n_seqs * seq_len, *] matrix.
  template <class M>
  M sequence(M m, Index b) const {
    return m.middle_rows(b * seq_len, seq_len);
  }
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
  /// Calls f(name, tensor) for every parameter of the layer (a compressed Linear's weight is not
  /// among them: it is no longer a Tensor).
  virtual void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) = 0;
  /// Calls f(name, linear) for every Linear of the layer, under the names visit_parameters gives
  /// their weights without ".weight" (what Decoder::compress_weights stores compressed). A layer
  /// without Linears keeps the default.
  virtual void visit_linears(const std::function<void(const std::string&, Linear<T>&)>& f) { (void)f; }

  /// One decode step of several sequences: row b of x [B, d] is the next token of the sequence
  /// whose state is states[b] and context ctxs[b] (its positions, rope, FLOP counter, workspace,
  /// policy); y [B, d]. Equals forward() on each row with its own state and context. The default
  /// does exactly that, one row at a time; layers whose products can share the weights override it.
  virtual void forward_batch(ConstView<T> x, View<T> y, std::span<LayerState<T>* const> states, std::span<StepContext<T>* const> ctxs) const {
    for (Index b = 0; b < x.rows(); ++b)
      forward(x.middle_rows(b, 1), y.middle_rows(b, 1), states[std::size_t(b)], *ctxs[std::size_t(b)]);
  }

  /// Training forward: y = f(x) over ctx.n_seqs sequences of ctx.seq_len rows, each from a fresh
  /// state (no KV cache, no policy); saves on ctx.tape what backward() needs. Equals forward() on
  /// each sequence from a fresh state.
  virtual void forward_train(ConstView<T> x, View<T> y, TrainContext<T>& ctx) const {
    (void)x, (void)y, (void)ctx;
    fail("SequenceLayer", "layer \"", kind(), "\" has no backward pass: it cannot be trained");
  }
  /// Backward of the last forward_train: dx = dL/dx (overwritten) from dy = dL/dy; parameter
  /// gradients are added into ctx.grads; pops what forward_train pushed (reverse order).
  virtual void backward(ConstView<T> dy, View<T> dx, TrainContext<T>& ctx) const {
    (void)dy, (void)dx, (void)ctx;
    fail("SequenceLayer", "layer \"", kind(), "\" has no backward pass: it cannot be trained");
  }
};

/// Runs `rows` (the rows of a batched step, one per sequence) through `f(x, y, ctx)` once, with a
/// scratch FLOP counter whose counts are then shared equally among the sequences' counters (every
/// row costs the same in a row-wise product).
template <class T, class F>
void batched_rows(std::span<StepContext<T>* const> ctxs, F&& f) {
  FlopCounter shared;
  StepContext<T> ctx = *ctxs.front();
  ctx.flops = &shared;
  f(ctx);
  for (StepContext<T>* c : ctxs)
    if (c->flops) c->flops->add_share(shared, 1.0 / double(ctxs.size()));
}

/// Visits a Linear's weight (unless compressed) and bias under `prefix`.
template <class T>
void visit_linear(const std::string& prefix, Linear<T>& linear, const std::function<void(const std::string&, Tensor<T>&)>& f) {
  if (linear.compressed.empty()) f(prefix + ".weight", linear.weight);
  if (!linear.bias.empty()) f(prefix + ".bias", linear.bias);
}

ENGRAM_NAMESPACE_END
