// Recurrent wrapper: splits a sequence of any length into segments, carries the memory from one to
// the next, and streams: tokens are pushed in any chunks, a segment runs as soon as it is complete,
// so a sequence of millions of tokens runs in constant memory.
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "engram/rmt/memory_cell.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// Called once per segment, in order, while its outputs are valid.
template <class T>
using SegmentCallback = std::function<void(const SegmentOutput<T>&)>;

/// Options of a streaming sequence.
struct StreamOptions {
  /// Decoder layout: project every content row through the LM head (for the callback); otherwise
  /// only the last content token of each segment is projected (the readout).
  bool content_logits = false;
  /// Length of the sequence when known in advance; required by right alignment (the first segment
  /// is the short one). -1: unknown.
  Index total_tokens = -1;
};

/// Options of a whole-sequence run().
struct RunOptions {
  bool all_logits = false;     ///< decoder: keep the content logits of every segment, [N, V]
  bool keep_segments = false;  ///< keep copies of every segment's memory, hidden states and logits
};

/// Copies of one segment's outputs (RunOptions::keep_segments).
template <class T>
struct SegmentRecord {
  Segment tokens;
  Tensor<T> memory_in, hidden, logits, memory_out;
};

/// What run() returns.
template <class T>
struct RunResult {
  Tensor<T> logits;        ///< all_logits: [N, V] concatenated content logits (decoder), else empty
  Tensor<T> readout;       ///< last segment: last-token LM logits [1, V] (decoder) or class logits [1, labels] (encoder)
  Tensor<T> final_memory;  ///< [m, d]
  std::vector<SegmentRecord<T>> segments;  ///< keep_segments only
  Index n_segments = 0;
  FlopCounter flops;
};

/// An RMT model: a MemoryCell applied segment after segment. Weights are immutable; everything a
/// sequence changes lives in its State.
template <class T>
class RecurrentWrapper {
 public:
  explicit RecurrentWrapper(MemoryCell<T> cell) : cell_(std::move(cell)) {}

  const MemoryCell<T>& cell() const { return cell_; }
  const Config& config() const { return cell_.config(); }
  const Decoder<T>& backbone() const { return cell_.backbone(); }

  /// The state of one sequence: current memory, the tokens of the incomplete segment, counters,
  /// the readout of the last segment, FLOP totals and the cell's scratch.
  class State {
   public:
    /// Memory the next segment reads [m, d] (the final memory once finished).
    ConstView<T> memory() const { return memory_.view(); }
    /// Readout of the last segment run: last-token logits [1, V] (decoder) or class logits [1, labels]
    /// (encoder); empty before the first segment.
    const Tensor<T>& readout() const { return readout_; }
    Index tokens_pushed() const { return pushed_; }
    Index tokens_processed() const { return processed_; }
    Index segments() const { return segments_; }
    bool finished() const { return finished_; }
    const StreamOptions& options() const { return options_; }
    /// FLOPs of every segment so far (backbone, LM head or classifier).
    FlopCounter flops;

    /// Bytes that carry the sequence from one segment to the next: memory, the buffered tokens
    /// (at most one segment) and the readout. Independent of the sequence length.
    std::size_t bytes() const { return memory_.bytes() + buffer_.capacity() * sizeof(std::int32_t) + readout_.bytes(); }
    /// Scratch reused by every segment: the backbone state of one segment (its KV caches), its
    /// workspace and the layout buffers.
    std::size_t workspace_bytes() const { return scratch_.bytes(); }
    /// High-water mark of bytes() + workspace_bytes(), sampled at the end of every segment (when
    /// the segment's KV caches are full).
    std::size_t peak_bytes() const { return std::max(peak_, bytes() + workspace_bytes()); }

    /// A deep copy that continues independently (the scratch is not copied).
    State copy() const {
      State s = model_->make_state(options_);
      s.memory_ = memory_.copy();
      s.buffer_ = buffer_;
      s.readout_ = readout_.copy();
      s.pushed_ = pushed_, s.processed_ = processed_, s.segments_ = segments_;
      s.finished_ = finished_;
      s.flops = flops;
      s.peak_ = peak_;
      return s;
    }
    /// Back to the start of a new sequence: memory = the learned initial memory (same options).
    void reset() { *this = model_->make_state(options_); }

   private:
    friend class RecurrentWrapper;
    const RecurrentWrapper* model_ = nullptr;
    StreamOptions options_;
    Tensor<T> memory_;                 // [m, d]
    std::vector<std::int32_t> buffer_;  // tokens of the incomplete segment (fewer than its size)
    Tensor<T> readout_;
    Index pushed_ = 0, processed_ = 0, segments_ = 0;
    bool finished_ = false;
    std::size_t peak_ = 0;
    typename MemoryCell<T>::Scratch scratch_;
  };

  /// A new sequence starting from the learned initial memory. Right alignment needs
  /// options.total_tokens. The wrapper must outlive the state and stay where it is.
  State make_state(StreamOptions options = {}) const {
    check(options.total_tokens == -1 || options.total_tokens > 0, "rmt::RecurrentWrapper", "total_tokens must be positive or -1, got ",
          options.total_tokens);
    check(config().alignment == Alignment::left || options.total_tokens > 0, "rmt::RecurrentWrapper",
          "right-aligned segments need the sequence length in advance (StreamOptions::total_tokens)");
    State s;
    s.model_ = this;
    s.options_ = options;
    s.memory_ = cell_.initial_memory().copy();
    s.scratch_ = cell_.make_scratch();
    return s;
  }

  /// Appends tokens to the sequence; runs every segment they complete (calling `on_segment`).
  void push(std::span<const std::int32_t> tokens, State& s, const SegmentCallback<T>& on_segment = {}) const {
    const char* where = "rmt::RecurrentWrapper::push";
    check(s.model_ == this, where, "state belongs to another model");
    check(!s.finished_, where, "the sequence is finished; reset() the state to start another");
    if (s.options_.total_tokens > 0)
      check(s.pushed_ + Index(tokens.size()) <= s.options_.total_tokens, where, "pushing ", tokens.size(), " tokens after ", s.pushed_,
            " exceeds the declared total_tokens = ", s.options_.total_tokens);
    s.pushed_ += Index(tokens.size());
    while (!tokens.empty()) {
      const std::size_t size = std::size_t(next_segment_size(s));
      if (s.buffer_.empty() && tokens.size() >= size) {  // a whole segment in the input: no copy
        run_segment(tokens.first(size), s, on_segment);
        tokens = tokens.subspan(size);
        continue;
      }
      const std::size_t take = std::min(size - s.buffer_.size(), tokens.size());
      s.buffer_.insert(s.buffer_.end(), tokens.begin(), tokens.begin() + std::ptrdiff_t(take));
      tokens = tokens.subspan(take);
      if (s.buffer_.size() == size) {
        run_segment(s.buffer_, s, on_segment);
        s.buffer_.clear();
      }
    }
  }

  /// Ends the sequence: runs the short last segment, if any. Throws Error for an empty sequence or
  /// fewer tokens than the declared total.
  void finish(State& s, const SegmentCallback<T>& on_segment = {}) const {
    const char* where = "rmt::RecurrentWrapper::finish";
    check(s.model_ == this, where, "state belongs to another model");
    check(!s.finished_, where, "the sequence is already finished");
    check(s.pushed_ > 0, where, "empty sequence: push at least one token");
    if (s.options_.total_tokens > 0)
      check(s.pushed_ == s.options_.total_tokens, where, "declared total_tokens = ", s.options_.total_tokens, ", pushed ", s.pushed_);
    if (!s.buffer_.empty()) {
      run_segment(s.buffer_, s, on_segment);
      s.buffer_.clear();
    }
    s.finished_ = true;
  }

  /// The whole sequence in one call (segments as config().alignment says).
  RunResult<T> run(std::span<const std::int32_t> tokens, RunOptions options = {}) const {
    check(!tokens.empty(), "rmt::RecurrentWrapper::run", "empty sequence");
    const bool decoder = config().layout == Layout::decoder;
    State s = make_state({.content_logits = options.all_logits && decoder, .total_tokens = Index(tokens.size())});
    RunResult<T> r;
    if (options.all_logits && decoder) r.logits = Tensor<T>({Index(tokens.size()), backbone().config.vocab_size});
    const SegmentCallback<T> collect = [&](const SegmentOutput<T>& o) {
      if (options.all_logits && decoder) copy(o.logits, r.logits.view().middle_rows(o.tokens.begin, o.tokens.size));
      if (options.keep_segments)
        r.segments.push_back({o.tokens, Tensor<T>::from_view(o.memory_in), Tensor<T>::from_view(o.hidden),
                              o.logits.empty() ? Tensor<T>() : Tensor<T>::from_view(o.logits), Tensor<T>::from_view(o.memory_out)});
    };
    push(tokens, s, collect);
    finish(s, collect);
    r.readout = s.readout_.copy();
    r.final_memory = s.memory_.copy();
    r.n_segments = s.segments_;
    r.flops = s.flops;
    return r;
  }

 private:
  Index next_segment_size(const State& s) const {
    const Index seg = config().segment_size;
    if (s.segments_ == 0 && s.options_.total_tokens > 0) return first_segment_size(s.options_.total_tokens, seg, config().alignment);
    return seg;
  }

  void run_segment(std::span<const std::int32_t> tokens, State& s, const SegmentCallback<T>& on_segment) const {
    SegmentOutput<T> out = cell_.forward(tokens, s.memory_.view(), s.scratch_, s.options_.content_logits);
    out.index = s.segments_;
    out.tokens = {s.processed_, Index(tokens.size())};
    if (on_segment) on_segment(out);
    s.flops += s.scratch_.backbone.flops;
    copy(out.memory_out, s.memory_.view());
    const ConstView<T> last = out.logits.empty() ? out.logits : out.logits.middle_rows(out.logits.rows() - 1, 1);
    if (s.readout_.rows() != last.rows() || s.readout_.cols() != last.cols() || s.readout_.rank() != 2)
      s.readout_ = Tensor<T>({last.rows(), last.cols()});
    copy(last, s.readout_.view());
    s.processed_ += Index(tokens.size());
    ++s.segments_;
    s.peak_ = std::max(s.peak_, s.bytes() + s.workspace_bytes());
  }

  MemoryCell<T> cell_;
};

}  // namespace rmt
ENGRAM_NAMESPACE_END
