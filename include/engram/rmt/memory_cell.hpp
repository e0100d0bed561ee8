// Memory cell: one segment through an unchanged backbone (any Decoder block stack) with the RMT
// memory layout; builds the layout and its mask, runs the backbone on a fresh state (positions
// restart) and exposes the hidden states, the logits and the next memory. The layout builders are
// shared with the training step (rmt/bptt.hpp), so inference and training see the same rows.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/nn/classifier.hpp"
#include "engram/nn/decoder.hpp"
#include "engram/rmt/config.hpp"
#include "engram/rmt/segments.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// What one segment produced. Views point into the sequence state and stay valid until its next
/// segment runs.
template <class T>
struct SegmentOutput {
  Index index = 0;          ///< segment number in the sequence (0-based)
  Segment tokens;           ///< the content tokens of the sequence it holds
  ConstView<T> memory_in;   ///< [m, d] memory the segment read
  ConstView<T> hidden;      ///< [rows, d] final hidden states of the whole layout (after the final norm, if any)
  ConstView<T> memory_out;  ///< [m, d] memory the segment wrote: rows of `hidden` (empty without write memory)
  /// Decoder: content logits [size, V] when requested, else the last content token's [1, V].
  /// Encoder: classifier logits [1, labels] (empty without a classification head).
  ConstView<T> logits;
};

namespace layout {

/// The decoder layout's mask with the NeurIPS-22 memory blocks (rmt.md 1.4): causal, plus the
/// read-memory block [0, m)^2 and, with write memory, the write-memory block [m + s, s + 2m)^2.
/// mk: [n, n] with n = s + m (no write memory) or s + 2m.
inline void bidirectional_mask(View<std::uint8_t> mk, Index m, Index s) {
  const Index n = mk.rows();
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < mk.cols(); ++j) mk(i, j) = std::uint8_t(j <= i || (i < m && j < m) || (i >= m + s && j >= m + s));
}

/// Every row sees the keys [0, used) (BERT's key padding: PAD keys are hidden, PAD queries computed).
inline void key_padding_mask(View<std::uint8_t> mk, Index used) {
  for (Index i = 0; i < mk.rows(); ++i)
    for (Index j = 0; j < mk.cols(); ++j) mk(i, j) = std::uint8_t(j < used);
}

/// The ids of the encoder layout [CLS] memory [SEP] x [SEP] PAD.. (input_size ids, rmt.md 1.2). The
/// memory slots get the CLS id: their word embeddings are overwritten by the memory before positions,
/// types and the norm, so the id is never seen. Returns the number of used (non-PAD) rows.
inline Index encoder_ids(const Config& c, std::span<const std::int32_t> tokens, std::span<std::int32_t> ids) {
  const Index s = Index(tokens.size()), m = c.memory_tokens, used = s + m + 3;
  std::fill(ids.begin(), ids.end(), c.pad_id);
  for (Index i = 0; i <= m; ++i) ids[std::size_t(i)] = c.cls_id;
  ids[std::size_t(m + 1)] = c.sep_id;
  std::copy(tokens.begin(), tokens.end(), ids.begin() + (m + 2));
  ids[std::size_t(used - 1)] = c.sep_id;
  return used;
}

/// A [n, n] view of `t`, growing it when needed.
inline View<std::uint8_t> square(Tensor<std::uint8_t>& t, Index n) {
  if (t.rank() != 2 || t.cols() < n) t = Tensor<std::uint8_t>({n, n});
  else if (t.rows() < n) t.resize_rows(n);
  return t.view().block(0, n, 0, n);
}

}  // namespace layout

/// The weights of an RMT memory cell: a shared backbone, the learned initial memory, the
/// classification head of the encoder layout, and the layout. forward() runs one segment.
/// The weights are immutable while sequences run; a trainer changes them only through
/// visit_parameters() (the optimizer step).
template <class T>
class MemoryCell {
 public:
  /// Reusable per-sequence buffers of the cell: the backbone's state (reset at every segment, so
  /// positions restart) and the layout, mask and logits matrices.
  class Scratch {
   public:
    /// State of the segment that ran last; its FLOP counter holds that segment's FLOPs.
    typename Decoder<T>::State backbone;
    /// Bytes held: the backbone state (KV caches of one segment), its workspace and the buffers.
    std::size_t bytes() const {
      return backbone.bytes() + backbone.workspace_bytes() + x_.bytes() + mask_.bytes() + logits_.bytes() +
             ids_.capacity() * sizeof(std::int32_t);
    }

   private:
    friend class MemoryCell;
    const Decoder<T>* owner_ = nullptr;  // the backbone `backbone` was made for
    Tensor<T> x_;                  // [rows, d]: the layout, then the hidden states
    Tensor<std::uint8_t> mask_;    // [rows, rows]: custom masks (bidirectional memory, key padding)
    Tensor<T> logits_;             // [s, V] or [1, V] / [1, labels]
    std::vector<std::int32_t> ids_;
  };

  /// `initial_memory` [m, d] (may be empty when m = 0). `classifier` is the readout of the encoder
  /// layout (optional). Throws Error when the config does not fit the backbone.
  MemoryCell(std::shared_ptr<const Decoder<T>> backbone, Config config, Tensor<T> initial_memory,
             SequenceClassifier<T> classifier = {})
      : backbone_(std::move(backbone)), config_(config), memory_(std::move(initial_memory)), classifier_(std::move(classifier)) {
    check(backbone_ != nullptr, "rmt::MemoryCell", "null backbone");
    config_.validate(backbone_->config);
    const Index m = config_.memory_tokens, d = backbone_->config.d_model;
    if (m == 0 && memory_.empty()) memory_ = Tensor<T>({0, d});
    check(memory_.rank() == 2 && memory_.rows() == m && memory_.cols() == d, "rmt::MemoryCell", "initial memory expected shape [",
          m, ", ", d, "], got ", memory_.shape());
    if (!classifier_.empty())
      check(classifier_.pooler.in() == d, "rmt::MemoryCell", "classifier expects hidden size ", classifier_.pooler.in(), ", backbone has ", d);
  }

  const Config& config() const { return config_; }
  const Decoder<T>& backbone() const { return *backbone_; }
  const std::shared_ptr<const Decoder<T>>& shared_backbone() const { return backbone_; }
  /// The learned initial memory [m, d].
  const Tensor<T>& initial_memory() const { return memory_; }
  const SequenceClassifier<T>& classifier() const { return classifier_; }
  Index memory_tokens() const { return config_.memory_tokens; }
  Index d_model() const { return backbone_->config.d_model; }

  /// Calls f(name, tensor) for every trained parameter: the backbone's (Decoder names), "memory"
  /// (decoder and encoder layouts alike: the encoder's memory rows of the vocabulary live here
  /// while training; rmt::save writes them back) and the encoder's head ("pooler.*",
  /// "classifier.*"). The backbone is shared: training through these references changes it for
  /// every holder, so train a backbone no running sequence uses.
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) {
    const_cast<Decoder<T>&>(*backbone_).visit_parameters(f);
    if (!memory_.empty()) f("memory", memory_);
    if (!classifier_.empty()) {
      visit_linear<T>("pooler", classifier_.pooler, f);
      visit_linear<T>("classifier", classifier_.classifier, f);
    }
  }

  Scratch make_scratch() const {
    Scratch s;
    s.backbone = backbone_->make_state();
    s.owner_ = backbone_.get();
    return s;
  }

  /// Runs one segment of 1..segment_size content tokens reading `memory` [m, d]. With
  /// `content_logits` the decoder layout projects every content row through the LM head. Without
  /// `write_memory` (decoder layout only) the layout is [memory | x]: the content rows and their
  /// logits are the same (no content row sees the write memory), no next memory is produced; it
  /// is the prefix a generation continues (the official MemoryCell.generate, rmt.md 1.3).
  SegmentOutput<T> forward(std::span<const std::int32_t> tokens, ConstView<T> memory, Scratch& sc, bool content_logits = false,
                           bool write_memory = true) const {
    const char* where = "rmt::MemoryCell";
    const Index s = Index(tokens.size()), m = config_.memory_tokens, d = d_model();
    check(s >= 1 && s <= config_.segment_size, where, "a segment holds 1 to ", config_.segment_size, " tokens, got ", s);
    check(write_memory || config_.layout == Layout::decoder, where, "a segment without write memory needs the decoder layout");
    check_shape(memory, m, d, where, "memory");
    // NaN policy: a non-finite memory row is an Error before the segment runs (the memory it writes
    // is the backbone's output, which the Decoder checks block by block).
    check_finite<T>(memory, where, "the memory the segment reads", 0, "memory row");
    check(sc.owner_ == backbone_.get(), where, "scratch made by another cell's backbone (use make_scratch())");
    check_tokens(tokens, where);
    const Index n = write_memory ? config_.rows(s) : s + m;

    sc.backbone.reset();  // fresh caches: positions restart at 0 in every segment
    View<T> x = rows_of(sc.x_, n, d);
    StepMask mask;
    if (config_.layout == Layout::decoder) {
      // x: [read memory (m) | x (s) | write memory (m)], the same memory twice (rmt.md 1.3).
      backbone_->embed_tokens(tokens, x.middle_rows(m, s));
      copy(memory, x.middle_rows(0, m));
      if (write_memory) copy(memory, x.middle_rows(m + s, m));
      if (config_.memory_mask == MemoryMask::bidirectional && m > 0) {
        View<std::uint8_t> mk = layout::square(sc.mask_, n);
        layout::bidirectional_mask(mk, m, s);
        mask = {MaskKind::custom, mk};
      }
    } else {
      sc.ids_.resize(std::size_t(n));
      const Index used = layout::encoder_ids(config_, tokens, sc.ids_);
      backbone_->embed_tokens(sc.ids_, x);
      copy(memory, x.middle_rows(1, m));
      // The mask is by position, so content ids equal to pad_id are not masked (the official code strips them).
      if (used < n) {
        View<std::uint8_t> mk = layout::square(sc.mask_, n);
        layout::key_padding_mask(mk, used);
        mask = {MaskKind::custom, mk};
      }
    }
    backbone_->forward_embeddings(x, sc.backbone, mask);

    SegmentOutput<T> out;
    out.tokens = {0, s};
    out.memory_in = memory;
    out.hidden = x;
    if (write_memory) out.memory_out = ConstView<T>(x).middle_rows(config_.write_row(s), m);
    FlopCounter* flops = &sc.backbone.flops;
    if (config_.layout == Layout::decoder) {
      const Index rows = content_logits ? s : 1;
      View<T> logits = rows_of(sc.logits_, rows, backbone_->config.vocab_size);
      backbone_->logits(ConstView<T>(x).middle_rows(m + s - rows, rows), logits, flops);
      out.logits = logits;
    } else if (!classifier_.empty()) {
      sc.logits_ = classifier_.forward(ConstView<T>(x).middle_rows(0, 1), flops);
      out.logits = sc.logits_.view();
    }
    return out;
  }

  /// Throws Error naming the first id outside the backbone's vocabulary.
  void check_tokens(std::span<const std::int32_t> tokens, const char* where) const {
    const Index vocab = backbone_->config.vocab_size;
    for (std::size_t i = 0; i < tokens.size(); ++i)
      check(tokens[i] >= 0 && tokens[i] < vocab, where, "token id ", tokens[i], " at index ", i, " of the segment outside the vocabulary [0, ",
            vocab, ")");
  }

 private:
  // A [rows, cols] view of `t`, reallocating only when the width changes or it must grow.
  static View<T> rows_of(Tensor<T>& t, Index rows, Index cols) {
    t.reshape_rows(rows, cols);
    return t.view();
  }

  std::shared_ptr<const Decoder<T>> backbone_;
  Config config_;
  Tensor<T> memory_;
  SequenceClassifier<T> classifier_;
};

}  // namespace rmt
ENGRAM_NAMESPACE_END
