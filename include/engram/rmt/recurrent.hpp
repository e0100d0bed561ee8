// Recurrent wrapper: splits a sequence of any length into segments, carries the memory from one to
// the next, and streams: tokens are pushed in any chunks, a segment runs as soon as the token after
// it arrives (or at finish()), so a sequence of millions of tokens runs in constant memory. After
// reading, it scores a continuation or generates one (greedy), continuing the last segment with a KV
// cache; it trains through rmt/bptt.hpp. rmt::ArmtWrapper (rmt/armt.hpp) has the same interface.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engram/rmt/bptt.hpp"
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

/// Where score() and generate() put a continuation.
enum class Continuation {
  /// More of the sequence: it fills the incomplete segment and the segments it completes run, as if
  /// pushed; the state continues after it. Log-probabilities equal a whole run's content logits.
  stream,
  /// An answer, as the official RMT generate: it extends the last segment past the segment size
  /// ([memory | last segment's tokens | answer], no memory written), so the question and its answer
  /// share a segment even when the question ends one. The state is finished after it. Learned
  /// position tables bound the answer's length (Error beyond them).
  answer,
};

/// How a backbone answers by default: Continuation::answer, unless its positions come from a learned
/// table (such a table is sized for the training segments and has no rows for an answer past a
/// full one; its answers stream, and an explicit Continuation::answer throws when it does not fit).
inline Continuation answer_continuation(const ModelConfig& backbone) {
  return backbone.positions == PositionKind::learned ? Continuation::stream : Continuation::answer;
}

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
  using Scalar = T;
  using TrainBuffers = BpttBuffers<T>;

  explicit RecurrentWrapper(MemoryCell<T> cell) : cell_(std::move(cell)) {}

  const MemoryCell<T>& cell() const { return cell_; }
  /// Every trained parameter (MemoryCell::visit_parameters).
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) { cell_.visit_parameters(f); }
  /// One training step (rmt::bptt_step on the cell).
  StepStats train_step(const TrainBatch& batch, Gradients<T>* grads, TrainBuffers& buf, T grad_scale, const BpttOptions& o = {}) const {
    return bptt_step<T>(cell_, batch, grads, buf, grad_scale, o);
  }
  const Config& config() const { return cell_.config(); }
  const Decoder<T>& backbone() const { return cell_.backbone(); }
  Index segment_size() const { return config().segment_size; }
  /// "RMT (decoder, m = 16, s = 512) over gpt2 d = 768 x 12".
  std::string describe() const {
    const ModelConfig& b = backbone().config;
    return "RMT (" + std::string(name(config().layout)) + ", m = " + std::to_string(config().memory_tokens) + ", s = " +
           std::to_string(config().segment_size) + ") over " + b.architecture + " d = " + std::to_string(b.d_model) + " x " +
           std::to_string(b.n_layers);
  }

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
    /// (at most one segment, plus an answer) and the readout. Independent of the sequence length.
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
    std::vector<std::int32_t> buffer_;  // tokens of the last segment, not yet run (at most its size; an answer extends it)
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

  /// Appends tokens to the sequence; runs every segment they complete and a token follows (calling
  /// `on_segment`): a completed segment is held until the next token, so that an answer can continue
  /// it (Continuation::answer). finish() runs the last one.
  void push(std::span<const std::int32_t> tokens, State& s, const SegmentCallback<T>& on_segment = {}) const {
    const char* where = "rmt::RecurrentWrapper::push";
    check(s.model_ == this, where, "state belongs to another model");
    check(!s.finished_, where, "the sequence is finished (by finish() or an answer continuation); reset() the state to start another");
    if (s.options_.total_tokens > 0)
      check(s.pushed_ + Index(tokens.size()) <= s.options_.total_tokens, where, "pushing ", tokens.size(), " tokens after ", s.pushed_,
            " exceeds the declared total_tokens = ", s.options_.total_tokens);
    s.pushed_ += Index(tokens.size());
    feed_segments(tokens, s.buffer_, [&] { return next_segment_size(s); }, [&](std::span<const std::int32_t> seg) { run_segment(seg, s, on_segment); });
  }

  /// Ends the sequence: runs the last segment (held or short), if any. Throws Error for an empty
  /// sequence or fewer tokens than the declared total.
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

  /// Natural-log probabilities of `continuation` after everything pushed so far: out[i] = log
  /// p(continuation[i] | the sequence, continuation[0..i)). The last segment continues on a KV
  /// cache ([memory | buffered tokens], then one row per token). Continuation::stream: the
  /// continuation is pushed (the state continues after it; a segment it completes appends its write
  /// memory there and the next starts), so the probabilities equal the content logits of a whole
  /// run. Continuation::answer: the last segment grows by the continuation and the state is
  /// finished. Decoder layout, left alignment; throws Error before anything has been pushed.
  void score(std::span<const std::int32_t> continuation, State& s, std::span<double> out, Continuation mode = Continuation::stream) const {
    const char* where = "rmt::RecurrentWrapper::score";
    check(out.size() == continuation.size(), where, "expected ", continuation.size(), " outputs, got ", out.size());
    cell_.check_tokens(continuation, where);
    Tail t = start_tail(s, where, mode, Index(continuation.size()));
    for (std::size_t i = 0; i < continuation.size(); ++i) {
      out[i] = log_prob(t.logits.view(), continuation[i]);
      advance(t, s, continuation[i], mode);
    }
    if (mode == Continuation::answer) s.finished_ = true;
  }

  /// Greedy generation: up to max_new_tokens tokens, each the argmax of the next-token logits,
  /// stopping after `stop` (>= 0) when it is generated. The tokens are pushed or answer the
  /// sequence (`mode`, as in score()) and returned. Decoder layout, left alignment; throws Error
  /// before anything has been pushed.
  std::vector<std::int32_t> generate(State& s, Index max_new_tokens, std::int32_t stop = -1, Continuation mode = Continuation::stream) const {
    const char* where = "rmt::RecurrentWrapper::generate";
    check(max_new_tokens >= 0, where, "max_new_tokens must be >= 0, got ", max_new_tokens);
    Tail t = start_tail(s, where, mode, max_new_tokens);
    std::vector<std::int32_t> out;
    for (Index i = 0; i < max_new_tokens; ++i) {
      const T* row = t.logits.row(0);
      const std::int32_t next = std::int32_t(std::max_element(row, row + t.logits.cols()) - row);
      out.push_back(next);
      advance(t, s, next, mode);
      if (next == stop) break;
    }
    if (mode == Continuation::answer) s.finished_ = true;
    return out;
  }

 private:
  // The incomplete segment as a KV-cached prefix [memory | buffer] and the logits of the next token.
  struct Tail {
    typename Decoder<T>::State backbone;
    Tensor<T> x, logits;  // [rows, d] scratch; [1, V]
    Tensor<std::uint8_t> mask;
  };

  static double log_prob(ConstView<T> logits, std::int32_t token) {
    double mx = -INFINITY;
    for (Index i = 0; i < logits.cols(); ++i) mx = std::max(mx, double(logits(0, i)));
    check(std::isfinite(mx), "rmt::RecurrentWrapper", "non-finite logits: the model produced NaN or infinity");
    double sum = 0;
    for (Index i = 0; i < logits.cols(); ++i) sum += std::exp(double(logits(0, i)) - mx);
    return double(logits(0, token)) - mx - std::log(sum);
  }

  // Runs rows x [n, d] on the tail's caches: causal, plus the memory blocks of the bidirectional
  // mask; `write_block` marks the rows from `first_write` on as write memory (they see each other).
  void run_rows(Tail& t, State& s, View<T> x, Index first_read_rows, Index first_write) const {
    const Index m = config().memory_tokens, n = x.rows(), before = t.backbone.position();
    StepMask mask;
    if (config().memory_mask == MemoryMask::bidirectional && m > 0 && (first_read_rows > 0 || first_write < n)) {
      const Index keys = before + n;
      if (t.mask.rank() != 2 || t.mask.rows() != n || t.mask.cols() != keys) t.mask = Tensor<std::uint8_t>({n, keys});
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < keys; ++j)
          t.mask(i, j) = std::uint8_t(j <= before + i || (before + i < first_read_rows && j < first_read_rows) ||
                                      (i >= first_write && j >= before + first_write));
      mask = {MaskKind::custom, t.mask.view()};
    }
    backbone().forward_embeddings(x, t.backbone, mask);
    s.flops += t.backbone.flops;
    t.backbone.flops.reset();
  }

  // The tail of the state: [memory | buffered tokens] on a fresh cache, and the next-token logits
  // after the last buffered token. An answer of `tokens` must fit the
  // backbone's position table after the buffered segment.
  Tail start_tail(State& s, const char* where, Continuation mode, Index tokens) const {
    check(s.model_ == this, where, "state belongs to another model");
    check(config().layout == Layout::decoder, where, "scoring and generation need the decoder layout (the encoder classifies)");
    check(s.options_.total_tokens == -1 && config().alignment == Alignment::left, where,
          "continuing a sequence needs left-aligned segments and no declared total_tokens");
    check(!s.finished_, where, "the sequence is finished (by finish() or an answer continuation); reset() the state to start another");
    check(s.pushed_ > 0, where, "push at least one token before scoring or generating a continuation");
    const Index m = config().memory_tokens, b = Index(s.buffer_.size()), d = cell_.d_model();
    const ModelConfig& bc = backbone().config;
    check(mode != Continuation::answer || bc.positions != PositionKind::learned || m + b + tokens <= bc.max_positions, where,
          "an answer of ", tokens, " tokens after [", m, " memory | ", b, " tokens] needs ", m + b + tokens,
          " positions, the backbone's learned table has max_position_embeddings = ", bc.max_positions);
    Tail t;
    t.backbone = backbone().make_state();
    t.logits = Tensor<T>({1, backbone().config.vocab_size});
    // A pushed, unfinished sequence always buffers its last segment (held until a token follows it).
    t.x.reshape_rows(m + b, d);
    View<T> x = t.x.view();
    copy<T>(s.memory_.view(), x.middle_rows(0, m));
    backbone().embed_tokens(s.buffer_, x.middle_rows(m, b));
    run_rows(t, s, x, m, m + b);
    backbone().logits(ConstView<T>(x).middle_rows(m + b - 1, 1), t.logits.view(), &s.flops);
    return t;
  }

  // Appends `token` to the sequence: one row on the tail's cache. Streaming, a full segment is first
  // completed (close_segment); an answer only grows the segment.
  void advance(Tail& t, State& s, std::int32_t token, Continuation mode) const {
    if (mode == Continuation::stream && Index(s.buffer_.size()) == config().segment_size) close_segment(t, s);
    s.buffer_.push_back(token);
    ++s.pushed_;
    t.x.reshape_rows(1, cell_.d_model());
    View<T> x = t.x.view();
    backbone().embed_tokens(std::span<const std::int32_t>(&token, 1), x);
    run_rows(t, s, x, 0, 1);
    backbone().logits(ConstView<T>(x), t.logits.view(), &s.flops);
  }

  // The full segment on the tail's cache appends its write memory, which becomes the state's memory
  // (the readout: the logits after its last token); the tail restarts on the new memory.
  void close_segment(Tail& t, State& s) const {
    const Index m = config().memory_tokens, d = cell_.d_model(), seg = config().segment_size;
    if (m > 0) {
      t.x.reshape_rows(m, d);
      copy<T>(s.memory_.view(), t.x.view());
      run_rows(t, s, t.x.view(), 0, 0);
      copy(ConstView<T>(t.x.view()), s.memory_.view());
    }
    if (s.readout_.rank() != 2 || s.readout_.cols() != t.logits.cols()) s.readout_ = Tensor<T>({1, t.logits.cols()});
    copy<T>(t.logits.view(), s.readout_.view());
    s.processed_ += seg;
    ++s.segments_;
    s.buffer_.clear();
    s.peak_ = std::max(s.peak_, s.bytes() + s.workspace_bytes() + t.backbone.bytes() + t.backbone.workspace_bytes());
    t.backbone.reset();
    if (m > 0) {
      t.x.reshape_rows(m, d);
      copy<T>(s.memory_.view(), t.x.view());
      run_rows(t, s, t.x.view(), m, m);
    }
  }

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
