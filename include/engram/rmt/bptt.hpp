// Training an RMT: backpropagation through time across segments (full or truncated, rmt.md 2.4)
// with the gradient flowing through the memory into the learned initial memory and every weight.
// Memory stays bounded by recomputation: the forward pass keeps only each segment's input memory,
// the backward pass re-runs each segment's training forward from it, last segment first.
#pragma once

#include <span>
#include <vector>

#include "engram/rmt/memory_cell.hpp"
#include "engram/train/step.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// n_seqs sequences of the same `length` (so every sequence has the same segments; rmt.md 10
/// recommends equal lengths per batch over the official front-padding).
struct TrainBatch {
  std::vector<std::int32_t> tokens;   ///< [n_seqs * length]: sequence b is [b * length, (b + 1) * length)
  /// Decoder layout, [n_seqs * length]: the token content row i must predict (usually tokens[i + 1],
  /// across segment boundaries, as the official RecurrentWrapper shifts the concatenated logits), or
  /// < 0 for no loss there (train::kIgnore).
  std::vector<std::int32_t> labels;
  std::vector<std::int32_t> classes;  ///< encoder layout, [n_seqs]: the class the last segment's readout must give
  Index n_seqs = 0, length = 0;

  /// Positions (decoder) or sequences (encoder) with a loss.
  Index count(Layout layout) const {
    if (layout == Layout::encoder) return n_seqs;
    Index n = 0;
    for (std::int32_t l : labels) n += l >= 0;
    return n;
  }
};

/// Truncated BPTT, variant 1 of rmt.md 2.4 (RMTDecoderLMHeadMultiSeg.detach_memory): the memory
/// ENTERING segment j (0-based) of n is detached iff k2 != -1, j >= 1 and j + k2 <= n, so the last
/// k2 segments form one connected chain and earlier segments get the gradient of their own loss
/// only. k2 = -1 (or k2 >= n) is full BPTT; k2 = 1 cuts every memory gradient. The forward is
/// unchanged. The same rule applies to the encoder layout and to ARMT's associative state.
inline bool memory_detached(Index j, Index k2, Index n_segments) { return k2 != -1 && j >= 1 && j + k2 <= n_segments; }

/// Options of bptt_step.
struct BpttOptions {
  Index k2 = -1;          ///< truncated BPTT depth (memory_detached); -1: full BPTT
  /// Keep only each segment's input memory and recompute the segment in the backward pass (memory
  /// of one segment's activations whatever the number of segments). false keeps every segment's
  /// activations (the same gradients, more memory: for tests and short sequences).
  bool recompute = true;
  bool backward = true;   ///< false: forward and loss only (held-out evaluation)
  bool accuracy = false;  ///< count the sequences whose every labelled position is predicted by argmax (decoder)
  /// Gradient checkpointing inside each segment (block l recomputed in backward when true).
  std::function<bool(Index block)> checkpoint = {};
};

/// What one step saw.
struct StepStats {
  double loss_sum = 0;  ///< sum of -log p(label) over the labelled positions (decoder) or sequences (encoder)
  Index count = 0;      ///< labelled positions (decoder) or sequences (encoder)
  Index correct = 0;    ///< sequences answered right (decoder: with BpttOptions::accuracy; encoder: argmax class)
  Index sequences = 0;  ///< sequences with a loss
  Index segments = 0;
  Index tokens = 0;     ///< content tokens read
  double mean_loss() const { return count ? loss_sum / double(count) : 0.0; }
  StepStats& operator+=(const StepStats& o) {
    loss_sum += o.loss_sum, count += o.count, correct += o.correct, sequences += o.sequences, tokens += o.tokens;
    segments = std::max(segments, o.segments);
    return *this;
  }
};

/// Buffers reused by every step of one model: the lead's step buffers (tape, workspace, RoPE table,
/// hidden-state matrices) plus the saved input memory of each segment. Once the shapes have been
/// seen a step allocates nothing.
template <class T>
class BpttBuffers {
 public:
  train::StepBuffers<T> step;
  /// Bytes held: the step buffers (tape capacity: one segment's activations when recomputing) and
  /// the saved memories (n_segments x n_seqs x m x d).
  std::size_t bytes() const {
    std::size_t b = step.bytes() + dmem_.bytes() + mask_.bytes() + logits_.bytes() + ids_.capacity() * sizeof(std::int32_t) +
                    labels_.capacity() * sizeof(std::int32_t);
    for (const auto& t : memories_) b += t.bytes();
    return b;
  }

 private:
  template <class U>
  friend StepStats bptt_step(const MemoryCell<U>&, const TrainBatch&, Gradients<U>*, BpttBuffers<U>&, U, const BpttOptions&);
  std::vector<Tensor<T>> memories_;  // [n_seqs * m, d] entering each segment
  Tensor<T> dmem_;                   // [n_seqs * m, d] gradient of the memory leaving the segment being differentiated
  Tensor<std::uint8_t> mask_;
  Tensor<T> logits_;                 // [labelled rows, V] for the accuracy, or [n_seqs, labels] (encoder)
  std::vector<std::int32_t> ids_, labels_;
};

namespace detail {

// The rows of one segment for the whole batch and how to build them.
template <class T>
struct SegmentPlan {
  const MemoryCell<T>& cell;
  const TrainBatch& batch;
  Segment seg;
  Index n = 0;  // rows per sequence

  Index m() const { return cell.memory_tokens(); }
  bool decoder() const { return cell.config().layout == Layout::decoder; }
  std::span<const std::int32_t> tokens(Index b) const {
    return std::span<const std::int32_t>(batch.tokens).subspan(std::size_t(b * batch.length + seg.begin), std::size_t(seg.size));
  }
  Index read_row() const { return decoder() ? 0 : 1; }
  Index write_row() const { return cell.config().write_row(seg.size); }
  Index content_row() const { return cell.config().content_row(); }
};

// Training forward of one segment for the batch: x [B * n, d] holds the final hidden states on return.
template <class T>
void segment_forward(const SegmentPlan<T>& p, ConstView<T> memory, View<T> x, TrainContext<T>& ctx, std::vector<std::int32_t>& ids) {
  const Decoder<T>& bb = p.cell.backbone();
  const Index B = p.batch.n_seqs, m = p.m(), s = p.seg.size, n = p.n;
  for (Index b = 0; b < B; ++b) {
    View<T> rows = x.middle_rows(b * n, n);
    const ConstView<T> mem = memory.middle_rows(b * m, m);
    if (p.decoder()) {
      bb.embed_tokens(p.tokens(b), rows.middle_rows(m, s));
      copy(mem, rows.middle_rows(0, m));
      copy(mem, rows.middle_rows(m + s, m));
    } else {
      layout::encoder_ids(p.cell.config(), p.tokens(b), std::span<std::int32_t>(ids).subspan(std::size_t(b * n), std::size_t(n)));
      bb.embed_tokens(std::span<const std::int32_t>(ids).subspan(std::size_t(b * n), std::size_t(n)), rows);
      copy(mem, rows.middle_rows(1, m));
    }
  }
  bb.forward_train(x, ctx);
}

// The LM loss of one segment's content rows (decoder layouts): x [B * n, d] final hidden states,
// content token t of sequence b at row b * n + first + t; labels from the batch. Writes dL/dx into dx
// (labelled rows; 0 elsewhere) when non-empty and the head's gradient into g; counts the loss and,
// with `accuracy`, clears ok[b] when an argmax misses. Returns whether any row has a loss.
template <class T>
bool content_lm_loss(const Decoder<T>& bb, const TrainBatch& batch, Segment seg, Index n, Index first, ConstView<T> x, View<T> dx,
                     Gradients<T>* g, T grad_scale, bool accuracy, std::vector<std::int32_t>& labels, Tensor<T>& logits_buf, StepStats& stats,
                     std::vector<bool>& ok, std::vector<bool>& labelled, FlopCounter& flops) {
  const Index B = batch.n_seqs, N = batch.length, d = x.cols();
  labels.assign(std::size_t(B * n), train::kIgnore);
  Index count = 0;
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < seg.size; ++t) {
      const std::int32_t y = batch.labels[std::size_t(b * N + seg.begin + t)];
      labels[std::size_t(b * n + first + t)] = y;
      if (y >= 0) ++count, labelled[std::size_t(b)] = true;
    }
  if (count == 0) {
    if (!dx.empty())
      for (Index r = 0; r < dx.rows(); ++r) std::fill_n(dx.row(r), d, T(0));
    return false;
  }
  const Tensor<T>& head = bb.head_weight();
  Tensor<T>* g_head = g ? g->find(head) : nullptr;
  const CrossEntropyStats ce = lm_cross_entropy<T>(x, head.view(), labels, grad_scale, dx, g_head ? g_head->view() : View<T>());
  stats.loss_sum += ce.loss_sum, stats.count += ce.count;
  flops.add(FlopCategory::lm_head, (dx.empty() ? 1 : 3) * flops::gemm(count, head.rows(), d));
  if (accuracy) {
    // argmax of the labelled rows (a second, small product: the fused loss keeps no logits).
    logits_buf.reshape_rows(count, head.rows());
    View<T> logits = logits_buf.view();
    Tensor<T> h({count, d});
    std::vector<Index> seq_of;
    std::vector<std::int32_t> y_of;
    for (Index r = 0; r < B * n; ++r)
      if (labels[std::size_t(r)] >= 0) {
        std::copy_n(x.row(r), d, h.row(Index(seq_of.size())));
        seq_of.push_back(r / n), y_of.push_back(labels[std::size_t(r)]);
      }
    matmul_nt<T>(h.view(), head.view(), logits);
    for (Index r = 0; r < count; ++r) {
      const T* row = logits.row(r);
      if (Index(std::max_element(row, row + head.rows()) - row) != y_of[std::size_t(r)]) ok[std::size_t(seq_of[std::size_t(r)])] = false;
    }
  }
  return true;
}

}  // namespace detail

/// One training step of an RMT (decoder or encoder layout) on `batch`: the segments run in order
/// carrying the memory; the loss is the decoder's LM cross-entropy on the labelled content rows
/// (all segments, logits of row t predicting labels[t]) or the encoder's cross-entropy of the last
/// segment's class logits; gradients of grad_scale * loss_sum flow back through every segment and
/// through the memory (cut where memory_detached says) into the weights and the initial memory, and
/// are ADDED into `grads` (built from cell.visit_parameters; a frozen parameter gets none). Pass
/// grad_scale = 1 / batch.count(layout) for the mean. Returns the loss and, when asked, the
/// accuracy. The tape is empty again on return. Throws Error for a malformed batch.
template <class T>
StepStats bptt_step(const MemoryCell<T>& cell, const TrainBatch& batch, Gradients<T>* grads, BpttBuffers<T>& buf, T grad_scale,
                    const BpttOptions& o = {}) {
  const char* where = "rmt::bptt_step";
  const Config& c = cell.config();
  const Decoder<T>& bb = cell.backbone();
  const bool decoder = c.layout == Layout::decoder;
  const Index B = batch.n_seqs, N = batch.length, m = cell.memory_tokens(), d = cell.d_model();
  check(B >= 1 && N >= 1, where, "expected at least one sequence of at least one token, got ", B, " x ", N);
  check(Index(batch.tokens.size()) == B * N, where, "expected ", B * N, " tokens (", B, " x ", N, "), got ", batch.tokens.size());
  cell.check_tokens(batch.tokens, where);
  if (decoder) {
    check(Index(batch.labels.size()) == B * N, where, "expected ", B * N, " labels, got ", batch.labels.size());
    for (std::size_t i = 0; i < batch.labels.size(); ++i)
      check(batch.labels[i] < bb.config.vocab_size, where, "label ", batch.labels[i], " at row ", i, " outside the vocabulary [0, ",
            bb.config.vocab_size, ")");
  } else {
    check(!cell.classifier().empty(), where, "the encoder layout trains its classification head: the cell has none");
    check(Index(batch.classes.size()) == B, where, "expected ", B, " classes (one per sequence), got ", batch.classes.size());
    for (std::size_t i = 0; i < batch.classes.size(); ++i)
      check(batch.classes[i] >= 0 && batch.classes[i] < cell.classifier().n_labels(), where, "class ", batch.classes[i], " of sequence ", i,
            " outside [0, ", cell.classifier().n_labels(), ")");
  }
  check(o.k2 == -1 || o.k2 >= 1, where, "k2 must be -1 (full BPTT) or >= 1, got ", o.k2);
  Gradients<T>* g = o.backward ? grads : nullptr;

  const std::vector<Segment> segments = split(N, c.segment_size, c.alignment);
  const Index K = Index(segments.size());
  StepStats stats;
  stats.segments = K;
  stats.tokens = B * N;
  buf.memories_.resize(std::size_t(K));
  for (auto& t : buf.memories_) t.reshape_rows(B * m, d);
  // M_0: the initial memory for every sequence (memory is reset per sample, rmt.md 2.2).
  for (Index b = 0; b < B; ++b) copy(cell.initial_memory().view(), buf.memories_[0].view().middle_rows(b * m, m));

  std::vector<bool> ok(std::size_t(B), true), labelled(std::size_t(B), false);
  auto plan = [&](Index k) { return detail::SegmentPlan<T>{cell, batch, segments[std::size_t(k)], c.rows(segments[std::size_t(k)].size)}; };
  auto context = [&](const detail::SegmentPlan<T>& p) {
    TrainContext<T> ctx = buf.step.context(bb, B, p.n, g);
    ctx.checkpoint = o.checkpoint;
    if (decoder && c.memory_mask == MemoryMask::bidirectional && m > 0) {
      View<std::uint8_t> mk = layout::square(buf.mask_, p.n);
      layout::bidirectional_mask(mk, m, p.seg.size);
      ctx.mask = MaskKind::custom, ctx.custom_mask = mk;
    } else if (!decoder && p.seg.size + m + 3 < p.n) {
      View<std::uint8_t> mk = layout::square(buf.mask_, p.n);
      layout::key_padding_mask(mk, p.seg.size + m + 3);
      ctx.mask = MaskKind::custom, ctx.custom_mask = mk;
    }
    return ctx;
  };
  // Loss of segment k on its hidden states x: writes dL/dx (labelled rows; 0 elsewhere) into dx
  // when dx is non-empty. Returns whether any row of the segment has a loss.
  auto segment_loss = [&](const detail::SegmentPlan<T>& p, Index k, View<T> x, View<T> dx, TrainContext<T>& ctx) {
    const Index n = p.n;
    if (decoder)
      return detail::content_lm_loss<T>(bb, batch, p.seg, n, m, x, dx, g, grad_scale, o.accuracy, buf.labels_, buf.logits_, stats, ok,
                                        labelled, buf.step.flops);
    if (k != K - 1) {  // encoder: only the last segment's readout has a loss
      if (!dx.empty())
        for (Index r = 0; r < dx.rows(); ++r) std::fill_n(dx.row(r), d, T(0));
      return false;
    }
    const SequenceClassifier<T>& head = cell.classifier();
    Tensor<T> cls({B, d});
    for (Index b = 0; b < B; ++b) std::copy_n(x.row(b * n), d, cls.row(b));
    buf.logits_.reshape_rows(B, head.n_labels());
    View<T> logits = buf.logits_.view();
    head.forward_train(cls.view(), logits, *ctx.tape, ctx.flops);
    for (Index b = 0; b < B; ++b) {
      const T* row = logits.row(b);
      ok[std::size_t(b)] = Index(std::max_element(row, row + head.n_labels()) - row) == batch.classes[std::size_t(b)];
      labelled[std::size_t(b)] = true;
    }
    Tensor<T> dlogits({B, head.n_labels()});
    const CrossEntropyStats ce = softmax_cross_entropy<T>(logits, batch.classes, grad_scale, dx.empty() ? View<T>() : dlogits.view());
    stats.loss_sum += ce.loss_sum, stats.count += ce.count;
    if (dx.empty()) {
      (void)ctx.tape->pop(B, head.pooler.out());
      (void)ctx.tape->pop(B, head.pooler.in());
      return true;
    }
    Tensor<T> dcls({B, d});
    head.backward(dlogits.view(), dcls.view(), *ctx.tape, g, ctx.flops);
    for (Index r = 0; r < dx.rows(); ++r) std::fill_n(dx.row(r), d, T(0));
    for (Index b = 0; b < B; ++b) std::copy_n(dcls.row(b), d, dx.row(b * n));
    return true;
  };

  // Forward: every segment in order, keeping only the memory entering each one. With recomputation
  // the last segment is skipped (its backward recomputes it); without, each segment's activations
  // and hidden states stay on the tape.
  Tape<T>& tape = buf.step.tape;
  std::vector<Index> marks(std::size_t(K), 0);
  if (decoder) buf.ids_.clear();
  for (Index k = 0; k < K; ++k) {
    const detail::SegmentPlan<T> p = plan(k);
    if (o.backward && o.recompute && k == K - 1) break;
    TrainContext<T> ctx = context(p);
    if (!decoder) buf.ids_.resize(std::size_t(B * p.n));
    View<T> x = buf.step.hidden(B * p.n, d);
    marks[std::size_t(k)] = tape.mark();
    detail::segment_forward<T>(p, buf.memories_[std::size_t(k)].view(), x, ctx, buf.ids_);
    if (!o.backward) segment_loss(p, k, x, View<T>(), ctx);
    if (k + 1 < K)
      for (Index b = 0; b < B; ++b)
        copy(ConstView<T>(x).middle_rows(b * p.n + p.write_row(), m), buf.memories_[std::size_t(k + 1)].view().middle_rows(b * m, m));
    if (o.backward && !o.recompute) copy<T>(x, tape.push(B * p.n, d));
    else tape.rewind(marks[std::size_t(k)]);
  }

  if (o.backward) {
    // Backward: last segment first. dmem is the gradient of the memory leaving segment k (0 after
    // the last one); `flowing` says whether it can be non-zero.
    buf.dmem_.reshape_rows(B * m, d);
    buf.dmem_.set_zero();
    bool flowing = false;
    Tensor<T>* g_memory = g ? g->find(cell.initial_memory()) : nullptr;
    for (Index k = K - 1; k >= 0; --k) {
      const detail::SegmentPlan<T> p = plan(k);
      const Index n = p.n;
      const bool has_loss = decoder ? [&] {
        for (Index b = 0; b < B; ++b)
          for (Index t = 0; t < p.seg.size; ++t)
            if (batch.labels[std::size_t(b * N + p.seg.begin + t)] >= 0) return true;
        return false;
      }()
                                    : k == K - 1;
      if (!has_loss && !flowing) {  // nothing reaches this segment (or any before it through it)
        if (!o.recompute) tape.rewind(marks[std::size_t(k)]);
        continue;
      }
      TrainContext<T> ctx = context(p);
      if (!decoder) buf.ids_.resize(std::size_t(B * n));
      View<T> x = buf.step.hidden(B * n, d);
      if (o.recompute) {
        detail::segment_forward<T>(p, buf.memories_[std::size_t(k)].view(), x, ctx, buf.ids_);
      } else {
        copy<T>(tape.pop(B * n, d), x);
        if (!decoder)
          for (Index b = 0; b < B; ++b)
            layout::encoder_ids(c, p.tokens(b), std::span<std::int32_t>(buf.ids_).subspan(std::size_t(b * n), std::size_t(n)));
      }
      View<T> dx = buf.step.grad_hidden(B * n, d);
      segment_loss(p, k, x, dx, ctx);
      if (flowing)
        for (Index b = 0; b < B; ++b) {
          View<T> w = dx.middle_rows(b * n + p.write_row(), m);
          const ConstView<T> dm = buf.dmem_.view().middle_rows(b * m, m);
          for (Index r = 0; r < m; ++r) simd::add(w.row(r), dm.row(r), w.row(r), d);
        }
      bb.backward(dx, ctx);
      // dx now holds dL/d(input embeddings): word embeddings of the content (and the encoder's
      // special tokens) and the memory rows.
      for (Index b = 0; b < B; ++b) {
        if (decoder) {
          bb.embed.backward(p.tokens(b), ConstView<T>(dx).middle_rows(b * n + m, p.seg.size), g);
        } else {
          const std::span<const std::int32_t> ids = std::span<const std::int32_t>(buf.ids_).subspan(std::size_t(b * n), std::size_t(n));
          bb.embed.backward(ids.first(1), ConstView<T>(dx).middle_rows(b * n, 1), g);
          bb.embed.backward(ids.subspan(std::size_t(m + 1)), ConstView<T>(dx).middle_rows(b * n + m + 1, n - m - 1), g);
        }
        View<T> dm = buf.dmem_.view().middle_rows(b * m, m);
        copy(ConstView<T>(dx).middle_rows(b * n + p.read_row(), m), dm);
        if (decoder) {
          const ConstView<T> w = ConstView<T>(dx).middle_rows(b * n + p.write_row(), m);
          for (Index r = 0; r < m; ++r) simd::add(dm.row(r), w.row(r), dm.row(r), d);
        }
      }
      if (k == 0 && g_memory)
        for (Index b = 0; b < B; ++b)
          for (Index r = 0; r < m; ++r) simd::add(g_memory->row(r), buf.dmem_.view().row(b * m + r), g_memory->row(r), d);
      flowing = m > 0 && !memory_detached(k, o.k2, K);
      check(o.recompute || tape.mark() == marks[std::size_t(k)], where, "segment ", k, "'s backward left the tape unbalanced");
    }
  }
  for (Index b = 0; b < B; ++b)
    if (labelled[std::size_t(b)]) {
      ++stats.sequences;
      if (ok[std::size_t(b)] && (o.accuracy || !decoder)) ++stats.correct;
    }
  check(tape.empty(), where, "the backward left ", tape.mark(), " saved activations on the tape: a layer's forward_train and backward disagree");
  tape.clear();
  return stats;
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
