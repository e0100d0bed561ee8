// ARMT (Rodkin et al. 2024, arXiv 2407.04841; rmt.md 6): an associative memory per layer, read by
// every row before the layer from the second segment on and written after it from the outputs of m
// write-only memory tokens appended to each segment ([x | M], the same learned M every segment, at
// extra position rows). The recurrence lives only in the per-layer state (A_l, z_l), so the state
// is constant in size. ArmtWrapper drives the backbone's block stack itself (the reads and writes
// sit between blocks) and streams with the same interface as rmt::RecurrentWrapper: push, finish,
// run, score, generate, train_step (rmt/armt_bptt.hpp), so a user swaps one for the other.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/rmt/associative.hpp"
#include "engram/rmt/bptt.hpp"
#include "engram/rmt/recurrent.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// Everything that fixes an ARMT around a backbone (the official AssociativeMemoryCell's
/// arguments; only its defaults use_denom = correction = true, one head, no gating, are built).
struct ArmtConfig {
  Index memory_tokens = 0;  ///< m write-only memory tokens per segment
  Index segment_size = 0;   ///< s content tokens per segment
  Index d_mem = 0;          ///< width of the associative queries and keys before DPFP
  Index nu = 3;             ///< DPFP order (the official code fixes 3): d_key = 2 nu d_mem
  Alignment alignment = Alignment::left;

  static ArmtConfig make(Index memory_tokens, Index segment_size, Index d_mem) {
    ArmtConfig c;
    c.memory_tokens = memory_tokens, c.segment_size = segment_size, c.d_mem = d_mem;
    return c;
  }
  Index d_key() const { return 2 * nu * d_mem; }
  Index rows(Index s) const { return s + memory_tokens; }

  /// Throws Error naming the first value that does not fit `backbone`.
  void validate(const ModelConfig& backbone) const {
    const char* where = "rmt::ArmtConfig";
    check(memory_tokens >= 1 && memory_tokens <= Config::kMaxMemoryTokens, where, "memory_tokens must be in [1, ", Config::kMaxMemoryTokens,
          "] (ARMT writes its memory from the memory tokens: 0 cannot write), got ", memory_tokens);
    check(segment_size >= 1 && segment_size <= Config::kMaxSegment, where, "segment_size must be in [1, ", Config::kMaxSegment, "], got ",
          segment_size);
    check(segment_size >= memory_tokens, where, "segment_size ", segment_size, " is smaller than the memory (", memory_tokens, " tokens)");
    check(d_mem >= 1 && d_mem <= ModelConfig::kMaxDim, where, "d_mem must be in [1, ", ModelConfig::kMaxDim, "], got ", d_mem);
    check(nu >= 1 && nu <= 64, where, "nu must be in [1, 64], got ", nu);
    check(alignment == Alignment::left, where, "ARMT segments are left-aligned (the official default)");
    check(backbone.causal, where, "ARMT needs a causal backbone, got a bidirectional ", backbone.architecture);
    check(backbone.embedding_norm == false && backbone.type_vocab_size == 0, where, "ARMT wraps a decoder (GPT-2, Llama): ",
          backbone.architecture, " has an embedding norm or token types");
    if (backbone.positions == PositionKind::learned)
      check(segment_size + memory_tokens <= backbone.max_positions, where, "segment_size + memory_tokens = ", segment_size + memory_tokens,
            " exceeds the position table (", backbone.max_positions, " rows: content positions, then the memory tokens' ", memory_tokens, ")");
  }
};

template <class T>
class ArmtBuffers;

/// An ARMT model: a backbone, the learned memory tokens [m, d], one associative memory per layer.
/// Weights are immutable while sequences run; everything a sequence changes lives in its State.
template <class T>
class ArmtWrapper {
 public:
  using Scalar = T;
  using TrainBuffers = ArmtBuffers<T>;

  /// `memory` [m, d]; `layers` one per block of the backbone. Throws Error when they do not fit.
  ArmtWrapper(std::shared_ptr<const Decoder<T>> backbone, ArmtConfig config, Tensor<T> memory, std::vector<AssociativeMemory<T>> layers)
      : backbone_(std::move(backbone)), config_(config), memory_(std::move(memory)), layers_(std::move(layers)) {
    const char* where = "rmt::ArmtWrapper";
    check(backbone_ != nullptr, where, "null backbone");
    config_.validate(backbone_->config);
    const Index d = backbone_->config.d_model, m = config_.memory_tokens;
    check(memory_.rank() == 2 && memory_.rows() == m && memory_.cols() == d, where, "memory expected shape [", m, ", ", d, "], got ", memory_.shape());
    check(Index(layers_.size()) == Index(backbone_->blocks.size()), where, "expected one associative memory per block (", backbone_->blocks.size(),
          "), got ", layers_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const auto& a = layers_[l];
      check(a.d_model() == d && a.d_mem() == config_.d_mem && a.nu == config_.nu && a.wk.out() == config_.d_mem && a.wb.out() == 1 &&
                a.wv.out() == d && a.wq.in() == d && a.wk.in() == d && a.wb.in() == d,
            where, "associative memory ", l, " expected W_mq, W_mk [", config_.d_mem, ", ", d, "], W_mv [", d, ", ", d, "], W_mb [1, ", d,
            "], nu ", config_.nu);
    }
  }

  const ArmtConfig& config() const { return config_; }
  const Decoder<T>& backbone() const { return *backbone_; }
  const std::shared_ptr<const Decoder<T>>& shared_backbone() const { return backbone_; }
  /// The learned memory tokens [m, d] appended to every segment.
  const Tensor<T>& memory() const { return memory_; }
  const std::vector<AssociativeMemory<T>>& layers() const { return layers_; }
  Index segment_size() const { return config_.segment_size; }
  Index memory_tokens() const { return config_.memory_tokens; }
  Index d_model() const { return backbone_->config.d_model; }
  std::string describe() const {
    const ModelConfig& b = backbone().config;
    return "ARMT (m = " + std::to_string(config_.memory_tokens) + ", s = " + std::to_string(config_.segment_size) +
           ", d_mem = " + std::to_string(config_.d_mem) + ") over " + b.architecture + " d = " + std::to_string(b.d_model) + " x " +
           std::to_string(b.n_layers);
  }

  /// Every trained parameter: the backbone's (Decoder names), "memory", and per layer l
  /// "assoc.<l>.W_mq.weight", ".W_mk.weight", ".W_mv.weight", ".W_mb.weight", ".W_mb.bias". As
  /// MemoryCell::visit_parameters, training through these references changes the shared backbone.
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) {
    const_cast<Decoder<T>&>(*backbone_).visit_parameters(f);
    f("memory", memory_);
    for (std::size_t l = 0; l < layers_.size(); ++l) layers_[l].visit_parameters("assoc." + std::to_string(l), f);
  }

  /// Position of row r of a segment whose content has `s_k` rows: content rows 0 .. s_k - 1; the
  /// memory rows after the backbone's own rows of a learned table (the official
  /// wrap_positional_embeddings: rows P - m .. P - 1), or s_k + i with RoPE.
  Index position(Index r, Index s_k) const {
    if (r < s_k || backbone_->config.positions != PositionKind::learned) return r;
    return backbone_->config.max_positions - config_.memory_tokens + (r - s_k);
  }

  /// The state of one sequence: the associative memories (A_l, z_l), the tokens of the incomplete
  /// segment, counters, the readout, FLOP totals and the scratch of one segment.
  class State {
   public:
    /// A_l [d_key, d] and z_l [1, d_key] of layer l (zero before the first segment's write).
    ConstView<T> A(Index l) const { return A_.at(std::size_t(l)).view(); }
    ConstView<T> z(Index l) const { return z_.at(std::size_t(l)).view(); }
    /// Last content token's logits [1, V] of the last segment run (empty before the first).
    const Tensor<T>& readout() const { return readout_; }
    Index tokens_pushed() const { return pushed_; }
    Index tokens_processed() const { return processed_; }
    Index segments() const { return segments_; }
    bool finished() const { return finished_; }
    const StreamOptions& options() const { return options_; }
    FlopCounter flops;

    /// Bytes carried from one segment to the next: the associative memories, the buffered tokens
    /// and the readout. Independent of the sequence length.
    std::size_t bytes() const {
      std::size_t b = buffer_.capacity() * sizeof(std::int32_t) + readout_.bytes();
      for (std::size_t l = 0; l < A_.size(); ++l) b += A_[l].bytes() + z_[l].bytes();
      return b;
    }
    /// Scratch reused by every segment: the KV caches of one segment, the workspace and buffers.
    std::size_t workspace_bytes() const {
      std::size_t b = ws_.bytes() + x_.bytes() + logits_.bytes() + rope_.cos.bytes() + rope_.sin.bytes() + positions_.capacity() * sizeof(std::int64_t);
      for (const auto& t : scratch_) b += t.bytes();
      for (const auto& block : caches_)
        for (const auto& st : block)
          if (st) b += st->bytes();
      return b;
    }
    std::size_t peak_bytes() const { return std::max(peak_, bytes() + workspace_bytes()); }

    /// A deep copy that continues independently (between segments the caches are empty).
    State copy() const {
      State s = model_->make_state(options_);
      for (std::size_t l = 0; l < A_.size(); ++l) s.A_[l] = A_[l].copy(), s.z_[l] = z_[l].copy();
      s.buffer_ = buffer_;
      s.readout_ = readout_.copy();
      s.pushed_ = pushed_, s.processed_ = processed_, s.segments_ = segments_, s.finished_ = finished_;
      s.flops = flops;
      s.peak_ = peak_;
      return s;
    }
    /// Back to the start of a new sequence (zero associative memories).
    void reset() { *this = model_->make_state(options_); }

   private:
    friend class ArmtWrapper;
    const ArmtWrapper* model_ = nullptr;
    StreamOptions options_;
    std::vector<Tensor<T>> A_, z_;
    std::vector<std::int32_t> buffer_;
    Tensor<T> readout_;
    Index pushed_ = 0, processed_ = 0, segments_ = 0;
    bool finished_ = false;
    std::size_t peak_ = 0;
    // Scratch of the segment being run: per-block layer states (KV caches), rows in them.
    std::vector<std::vector<std::unique_ptr<LayerState<T>>>> caches_;
    Index cached_ = 0;
    Workspace<T> ws_;
    std::vector<std::int64_t> positions_;
    RopeTable<T> rope_;
    Tensor<T> x_, logits_;
    std::array<Tensor<T>, 12> scratch_;  // read/write buffers (saved views of associative.hpp) and features
  };

  /// A new sequence (zero associative memories). ARMT segments are left-aligned: total_tokens is
  /// accepted as a bound.
  State make_state(StreamOptions options = {}) const {
    check(options.total_tokens == -1 || options.total_tokens > 0, "rmt::ArmtWrapper", "total_tokens must be positive or -1, got ",
          options.total_tokens);
    State s;
    s.model_ = this;
    s.options_ = options;
    const Index K = config_.d_key(), d = d_model();
    for (std::size_t l = 0; l < layers_.size(); ++l) s.A_.push_back(Tensor<T>({K, d})), s.z_.push_back(Tensor<T>({1, K}));
    reset_caches(s);
    return s;
  }

  /// Appends tokens; runs every segment they complete once a token follows it (calling `on_segment`:
  /// memory_in/out are empty, hidden holds the content and memory rows). A completed segment is held
  /// for an answer, as in RecurrentWrapper::push.
  void push(std::span<const std::int32_t> tokens, State& s, const SegmentCallback<T>& on_segment = {}) const {
    const char* where = "rmt::ArmtWrapper::push";
    check(s.model_ == this, where, "state belongs to another model");
    check(!s.finished_, where, "the sequence is finished (by finish() or an answer continuation); reset() the state to start another");
    check_tokens(tokens, where);
    if (s.options_.total_tokens > 0)
      check(s.pushed_ + Index(tokens.size()) <= s.options_.total_tokens, where, "pushing ", tokens.size(), " tokens after ", s.pushed_,
            " exceeds the declared total_tokens = ", s.options_.total_tokens);
    s.pushed_ += Index(tokens.size());
    feed_segments(tokens, s.buffer_, [&] { return config_.segment_size; },
                  [&](std::span<const std::int32_t> seg) { run_segment(seg, s, on_segment); });
  }

  /// Ends the sequence: runs the last segment (held or short), if any.
  void finish(State& s, const SegmentCallback<T>& on_segment = {}) const {
    const char* where = "rmt::ArmtWrapper::finish";
    check(s.model_ == this, where, "state belongs to another model");
    check(!s.finished_, where, "the sequence is already finished");
    check(s.pushed_ > 0, where, "empty sequence: push at least one token");
    if (s.options_.total_tokens > 0)
      check(s.pushed_ == s.options_.total_tokens, where, "declared total_tokens = ", s.options_.total_tokens, ", pushed ", s.pushed_);
    if (!s.buffer_.empty()) {
      const std::vector<std::int32_t> rest = std::move(s.buffer_);
      s.buffer_.clear();
      run_segment(rest, s, on_segment);
    }
    s.finished_ = true;
  }

  /// The whole sequence in one call (RunResult::final_memory stays empty: ARMT's state is A, z).
  RunResult<T> run(std::span<const std::int32_t> tokens, RunOptions options = {}) const {
    check(!tokens.empty(), "rmt::ArmtWrapper::run", "empty sequence");
    State s = make_state({.content_logits = options.all_logits});
    RunResult<T> r;
    if (options.all_logits) r.logits = Tensor<T>({Index(tokens.size()), backbone().config.vocab_size});
    const SegmentCallback<T> collect = [&](const SegmentOutput<T>& o) {
      if (options.all_logits) copy(o.logits, r.logits.view().middle_rows(o.tokens.begin, o.tokens.size));
      if (options.keep_segments)
        r.segments.push_back({o.tokens, Tensor<T>(), Tensor<T>::from_view(o.hidden), Tensor<T>::from_view(o.logits), Tensor<T>()});
    };
    push(tokens, s, collect);
    finish(s, collect);
    r.readout = s.readout_.copy();
    r.n_segments = s.segments_;
    r.flops = s.flops;
    return r;
  }

  /// As RecurrentWrapper::score: log-probabilities of a continuation token by token; the last
  /// segment continues on its KV caches. Continuation::stream pushes it (a completed segment appends
  /// its memory tokens there; content rows never see them, so this equals a whole run);
  /// Continuation::answer grows the last segment and finishes the state.
  void score(std::span<const std::int32_t> continuation, State& s, std::span<double> out, Continuation mode = Continuation::stream) const {
    const char* where = "rmt::ArmtWrapper::score";
    check(out.size() == continuation.size(), where, "expected ", continuation.size(), " outputs, got ", out.size());
    check_tokens(continuation, where);
    start_tail(s, where, mode, Index(continuation.size()));
    for (std::size_t i = 0; i < continuation.size(); ++i) {
      out[i] = log_prob(s.logits_.view(), continuation[i]);
      advance(s, continuation[i], mode);
    }
    if (mode == Continuation::answer) s.finished_ = true;
  }

  /// As RecurrentWrapper::generate: greedy, up to max_new_tokens, stopping after `stop`.
  std::vector<std::int32_t> generate(State& s, Index max_new_tokens, std::int32_t stop = -1, Continuation mode = Continuation::stream) const {
    const char* where = "rmt::ArmtWrapper::generate";
    check(max_new_tokens >= 0, where, "max_new_tokens must be >= 0, got ", max_new_tokens);
    start_tail(s, where, mode, max_new_tokens);
    std::vector<std::int32_t> out;
    for (Index i = 0; i < max_new_tokens; ++i) {
      const T* row = s.logits_.row(0);
      const std::int32_t next = std::int32_t(std::max_element(row, row + s.logits_.cols()) - row);
      out.push_back(next);
      advance(s, next, mode);
      if (next == stop) break;
    }
    if (mode == Continuation::answer) s.finished_ = true;
    return out;
  }

  /// One training step (rmt/armt_bptt.hpp): BPTT through the associative memories, with the
  /// options and conventions of rmt::bptt_step (decoder layout: labels per content row).
  StepStats train_step(const TrainBatch& batch, Gradients<T>* grads, TrainBuffers& buf, T grad_scale, const BpttOptions& o = {}) const;

  void check_tokens(std::span<const std::int32_t> tokens, const char* where) const {
    const Index vocab = backbone_->config.vocab_size;
    for (std::size_t i = 0; i < tokens.size(); ++i)
      check(tokens[i] >= 0 && tokens[i] < vocab, where, "token id ", tokens[i], " at index ", i, " outside the vocabulary [0, ", vocab, ")");
  }

 private:
  template <class U>
  friend class ArmtBuffers;

  void reset_caches(State& s) const {
    s.caches_.clear();
    for (const Block<T>& b : backbone_->blocks) {
      s.caches_.emplace_back();
      for (const Branch<T>& br : b.branches) s.caches_.back().push_back(br.layer->make_state());
    }
    s.cached_ = 0;
  }

  static double log_prob(ConstView<T> logits, std::int32_t token) {
    double mx = -INFINITY;
    for (Index i = 0; i < logits.cols(); ++i) mx = std::max(mx, double(logits(0, i)));
    check(std::isfinite(mx), "rmt::ArmtWrapper", "non-finite logits: the model produced NaN or infinity");
    double sum = 0;
    for (Index i = 0; i < logits.cols(); ++i) sum += std::exp(double(logits(0, i)) - mx);
    return double(logits(0, token)) - mx - std::log(sum);
  }

  static View<T> scratch(Tensor<T>& t, Index rows, Index cols) {
    t.reshape_rows(rows, cols);
    return t.view();
  }

  // Runs embeddings x [n, d] as the next rows of the current segment on the state's caches: the
  // first `content` rows are content (positions cached_ + r), the rest memory tokens (their
  // positions, then the write after every block). x holds the final hidden states on return.
  void run_rows(State& s, View<T> x, Index content) const {
    const Decoder<T>& bb = *backbone_;
    const ModelConfig& c = bb.config;
    const Index n = x.rows(), d = c.d_model, K = config_.d_key(), dm = config_.d_mem;
    const Index s_k = s.cached_ + content;  // content rows of the segment so far (all of them when memory rows come)
    s.positions_.resize(std::size_t(n));
    for (Index r = 0; r < n; ++r) s.positions_[std::size_t(r)] = position(s.cached_ + r, s_k);
    if (c.positions == PositionKind::learned)
      for (Index r = 0; r < n; ++r) simd::add(x.row(r), bb.position_table.row(s.positions_[std::size_t(r)]), x.row(r), d);
    if (c.positions == PositionKind::rope) fill_rope_table<T>(s.rope_, bb.inv_freq, s.positions_);
    StepContext<T> ctx;
    ctx.positions = s.positions_;
    ctx.rope = c.positions == PositionKind::rope ? &s.rope_ : nullptr;
    ctx.flops = &s.flops;
    ctx.workspace = &s.ws_;
    ctx.tokens_seen = s.cached_;
    const Index mrows = n - content;
    auto& sc = s.scratch_;
    for (std::size_t l = 0; l < bb.blocks.size(); ++l) {
      const AssociativeMemory<T>& a = layers_[l];
      if (s.segments_ > 0) {
        const typename AssociativeMemory<T>::ReadSaved rs{scratch(sc[0], n, d), scratch(sc[1], n, dm), scratch(sc[2], n, d), scratch(sc[3], n, 1)};
        a.read(x, s.A_[l].view(), s.z_[l].view(), rs, scratch(sc[4], n, K), &s.flops);
      }
      bb.blocks[l].forward(x, s.caches_[l], ctx);
      if (mrows > 0) {
        const typename AssociativeMemory<T>::WriteSaved ws{scratch(sc[5], mrows, d), scratch(sc[6], mrows, dm), scratch(sc[7], mrows, d),
                                                           scratch(sc[8], mrows, d), scratch(sc[9], mrows, 1),  scratch(sc[10], mrows, 1),
                                                           scratch(sc[11], mrows, 1)};
        a.write(ConstView<T>(x).middle_rows(content, mrows), s.A_[l].view(), s.z_[l].view(), s.A_[l].view(), s.z_[l].view(), s.segments_ == 0, ws,
                scratch(sc[4], mrows, K), &s.flops);
      }
    }
    if (c.final_norm) bb.final_norm.forward(x, x);
    s.cached_ += n;
  }

  // The segment of `tokens` (content) on fresh caches, with the memory tokens at its end.
  void run_segment(std::span<const std::int32_t> tokens, State& s, const SegmentCallback<T>& on_segment) const {
    const Index sk = Index(tokens.size()), m = config_.memory_tokens, d = d_model();
    reset_caches(s);
    View<T> x = scratch(s.x_, sk + m, d);
    backbone_->embed_tokens(tokens, x.middle_rows(0, sk));
    copy(memory_.view(), x.middle_rows(sk, m));
    run_rows(s, x, sk);
    const Index rows = s.options_.content_logits ? sk : 1;
    View<T> logits = scratch(s.logits_, rows, backbone_->config.vocab_size);
    backbone_->logits(ConstView<T>(x).middle_rows(sk - rows, rows), logits, &s.flops);
    SegmentOutput<T> out;
    out.index = s.segments_;
    out.tokens = {s.processed_, sk};
    out.hidden = x;
    out.logits = logits;
    if (on_segment) on_segment(out);
    if (s.readout_.rank() != 2 || s.readout_.cols() != logits.cols() || s.readout_.rows() != 1) s.readout_ = Tensor<T>({1, logits.cols()});
    copy(ConstView<T>(logits).middle_rows(rows - 1, 1), s.readout_.view());
    end_segment(s, sk);
  }

  void end_segment(State& s, Index sk) const {
    s.processed_ += sk;
    ++s.segments_;
    s.peak_ = std::max(s.peak_, s.bytes() + s.workspace_bytes());
    reset_caches(s);
  }

  // The last segment's buffered tokens on fresh caches; s.logits_ [1, V] = next-token logits. An
  // answer of `tokens` must fit a learned position table after them.
  void start_tail(State& s, const char* where, Continuation mode, Index tokens) const {
    check(s.model_ == this, where, "state belongs to another model");
    check(!s.finished_, where, "the sequence is finished (by finish() or an answer continuation); reset() the state to start another");
    check(s.pushed_ > 0, where, "push at least one token before scoring or generating a continuation");
    check(s.options_.total_tokens == -1, where, "continuing a sequence needs no declared total_tokens");
    const Index b = Index(s.buffer_.size()), d = d_model();
    const ModelConfig& bc = backbone_->config;
    check(mode != Continuation::answer || bc.positions != PositionKind::learned || b + tokens <= bc.max_positions, where, "an answer of ",
          tokens, " tokens after a segment of ", b, " needs ", b + tokens, " positions, the backbone's learned table has max_position_embeddings = ",
          bc.max_positions);
    reset_caches(s);
    View<T> logits = scratch(s.logits_, 1, backbone_->config.vocab_size);
    // A pushed, unfinished sequence always buffers its last segment (held until a token follows it).
    View<T> x = scratch(s.x_, b, d);
    backbone_->embed_tokens(s.buffer_, x);
    run_rows(s, x, b);
    backbone_->logits(ConstView<T>(x).middle_rows(b - 1, 1), logits, &s.flops);
  }

  // One more content token. Streaming, a full segment first runs its memory tokens (the write) and
  // the next starts; an answer only grows the segment.
  void advance(State& s, std::int32_t token, Continuation mode) const {
    const Index m = config_.memory_tokens, d = d_model(), seg = config_.segment_size;
    if (mode == Continuation::stream && Index(s.buffer_.size()) == seg) {
      View<T> mx = scratch(s.x_, m, d);
      copy(memory_.view(), mx);
      run_rows(s, mx, 0);
      if (s.readout_.rank() != 2 || s.readout_.cols() != s.logits_.cols() || s.readout_.rows() != 1) s.readout_ = Tensor<T>({1, s.logits_.cols()});
      copy(ConstView<T>(s.logits_.view()), s.readout_.view());
      s.buffer_.clear();
      end_segment(s, seg);
    }
    s.buffer_.push_back(token);
    ++s.pushed_;
    View<T> x = scratch(s.x_, 1, d);
    backbone_->embed_tokens(std::span<const std::int32_t>(&token, 1), x);
    run_rows(s, x, 1);
    backbone_->logits(ConstView<T>(x), s.logits_.view(), &s.flops);
  }

  std::shared_ptr<const Decoder<T>> backbone_;
  ArmtConfig config_;
  Tensor<T> memory_;
  std::vector<AssociativeMemory<T>> layers_;
};

}  // namespace rmt
ENGRAM_NAMESPACE_END

#include "engram/rmt/armt_bptt.hpp"
