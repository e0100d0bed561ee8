// One training step of a language model: the reusable step buffers (tape, scratch, RoPE table,
// hidden-state buffers) and lm_step: embeddings -> training forward -> fused LM head and
// cross-entropy -> backward into the gradients.
#pragma once

#include <span>
#include <vector>

#include "engram/core/cross_entropy.hpp"
#include "engram/nn/decoder.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// Labels below 0 are ignored (no loss at that position), as PyTorch's ignore_index = -100.
inline constexpr std::int32_t kIgnore = -100;

/// n_seqs sequences of seq_len tokens, row-major: tokens[b * seq_len + t]; labels[i] is the token
/// row i must predict (usually tokens[i + 1]) or negative to ignore the position.
struct Batch {
  std::vector<std::int32_t> tokens, labels;
  Index n_seqs = 0, seq_len = 0;

  Index rows() const { return n_seqs * seq_len; }
  /// Number of positions with a loss.
  Index count() const {
    Index n = 0;
    for (std::int32_t l : labels) n += l >= 0;
    return n;
  }
  /// Throws Error unless the shapes agree and every id fits a vocabulary of `vocab` tokens.
  void validate(Index vocab) const {
    const char* where = "train::Batch";
    check(n_seqs > 0 && seq_len > 0, where, "expected at least one sequence of at least one token, got ", n_seqs, " x ", seq_len);
    check(Index(tokens.size()) == rows() && Index(labels.size()) == rows(), where, "expected ", rows(),
          " tokens and labels, got ", tokens.size(), " and ", labels.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      check(tokens[i] >= 0 && tokens[i] < vocab, where, "token ", tokens[i], " at row ", i, " outside the vocabulary [0, ", vocab, ")");
      check(labels[i] < vocab, where, "label ", labels[i], " at row ", i, " outside the vocabulary [0, ", vocab, ")");
    }
  }
};

/// Buffers reused by every training step of one model: the activation tape, scratch matrices, the
/// RoPE table of the current sequence length and the hidden-state matrices. Once the shapes have
/// been seen, a step allocates nothing.
template <class T>
class StepBuffers {
 public:
  Tape<T> tape;
  Workspace<T> workspace;
  FlopCounter flops;

  /// A training context for n_seqs sequences of seq_len rows of `model`.
  TrainContext<T> context(const Decoder<T>& model, Index n_seqs, Index seq_len, Gradients<T>* grads) {
    if (model.config.positions == PositionKind::rope && (rope_model_ != &model || rope_.size() < seq_len)) {
      rope_ = model.rope_table(seq_len);
      rope_model_ = &model;
    }
    TrainContext<T> c;
    c.tape = &tape;
    c.grads = grads;
    c.workspace = &workspace;
    c.flops = &flops;
    c.n_seqs = n_seqs;
    c.seq_len = seq_len;
    c.rope = model.config.positions == PositionKind::rope ? &rope_ : nullptr;
    return c;
  }
  /// [rows, cols] views of the hidden-state buffer and of its gradient.
  View<T> hidden(Index rows, Index cols) { return sized(x_, rows, cols); }
  View<T> grad_hidden(Index rows, Index cols) { return sized(dx_, rows, cols); }
  /// Bytes held (tape capacity, scratch and hidden buffers).
  std::size_t bytes() const { return tape.capacity_bytes() + workspace.bytes() + x_.bytes() + dx_.bytes() + rope_.cos.bytes() + rope_.sin.bytes(); }

 private:
  static View<T> sized(Tensor<T>& t, Index rows, Index cols) {
    t.reshape_rows(rows, cols);
    return t.view();
  }
  Tensor<T> x_, dx_;
  RopeTable<T> rope_;
  const Decoder<T>* rope_model_ = nullptr;
};

/// Options of lm_step.
struct StepOptions {
  bool backward = true;  ///< false: forward and loss only (held-out evaluation)
  /// Gradient checkpointing: blocks for which it returns true are recomputed during backward.
  std::function<bool(Index block)> checkpoint;
  Index window = 0;      ///< sliding-window attention (0: full causal attention)
};

/// Forward, loss and (by default) backward of one batch of a language model: the loss is the sum of
/// -log p(label) over the labelled rows; gradients of grad_scale * loss are ADDED into `grads` (so
/// micro-batches accumulate; pass grad_scale = 1 / labelled rows of the whole batch for a mean).
/// Returns the loss sum and the labelled-row count. The tape is empty again on return.
template <class T>
CrossEntropyStats lm_step(const Decoder<T>& model, const Batch& batch, Gradients<T>* grads, StepBuffers<T>& buf, T grad_scale,
                          const StepOptions& options = {}) {
  batch.validate(model.config.vocab_size);
  const Index n = batch.rows(), d = model.config.d_model;
  TrainContext<T> ctx = buf.context(model, batch.n_seqs, batch.seq_len, options.backward ? grads : nullptr);
  ctx.checkpoint = options.checkpoint;
  ctx.window = options.window;
  View<T> x = buf.hidden(n, d);
  model.embed_tokens(batch.tokens, x);
  model.forward_train(x, ctx);
  const Tensor<T>& head = model.head_weight();
  CrossEntropyStats stats;
  if (!options.backward) {
    stats = lm_cross_entropy<T>(x, head.view(), batch.labels, T(0), View<T>(), View<T>());
    buf.tape.clear();
    return stats;
  }
  View<T> dx = buf.grad_hidden(n, d);
  Tensor<T>* g_head = grads ? grads->find(head) : nullptr;
  stats = lm_cross_entropy<T>(x, head.view(), batch.labels, grad_scale, dx, g_head ? g_head->view() : View<T>());
  buf.flops.add(FlopCategory::lm_head, 3 * flops::gemm(n, head.rows(), d));  // logits, dhidden, dW
  model.backward(dx, ctx);
  model.embed.backward(batch.tokens, dx, grads);
  check(buf.tape.empty(), "train::lm_step", "the backward left ", buf.tape.mark(), " saved activations on the tape: a layer's forward_train and backward disagree");
  buf.tape.clear();
  return stats;
}

}  // namespace train
ENGRAM_NAMESPACE_END
