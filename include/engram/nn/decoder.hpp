// Decoder: embeddings -> blocks -> final norm -> LM head. Weights are immutable and shared; a
// per-sequence State holds the caches. prefill/decode in any chunking give the same logits.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engram/core/finite.hpp"
#include "engram/nn/block.hpp"
#include "engram/nn/config.hpp"
#include "engram/nn/embedding.hpp"
#include "engram/nn/linear.hpp"
#include "engram/nn/mlp.hpp"
#include "engram/nn/self_attention.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Options of Decoder::prefill.
struct PrefillOptions {
  Index chunk = 0;          ///< tokens per step (0: as many as the cache policy allows)
  bool all_logits = false;  ///< logits for every token ([T, V]) instead of the last one ([1, V])
};

/// Mask of one step, for callers that lay out their own inputs (RMT memory blocks, padded encoders).
struct StepMask {
  MaskKind kind = MaskKind::causal;
  ConstView<std::uint8_t> custom;  ///< [T, keys] for MaskKind::custom
};

template <class T>
class Decoder {
 public:
  ModelConfig config;
  Embedding<T> embed;           ///< [vocab, d]
  Tensor<T> position_table;     ///< [max_positions, d] (learned positions)
  Tensor<T> type_table;         ///< [type_vocab_size, d] (token types; type 0 is used)
  Norm<T> embedding_norm;       ///< config.embedding_norm
  std::vector<Block<T>> blocks;
  Norm<T> final_norm;           ///< config.final_norm
  Linear<T> lm_head;            ///< [vocab, d]; empty when tied to the embedding
  std::vector<double> inv_freq; ///< RoPE frequencies after scaling

  /// A decoder of the standard shape (blocks of attention + MLP) with zero weights and unit norms.
  static Decoder create(const ModelConfig& c) {
    c.validate();
    Decoder m;
    m.config = c;
    m.embed.weight = Tensor<T>({c.vocab_size, c.d_model});
    if (c.positions == PositionKind::learned) m.position_table = Tensor<T>({c.max_positions, c.d_model});
    if (c.positions == PositionKind::rope) m.inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
    if (c.type_vocab_size > 0) m.type_table = Tensor<T>({c.type_vocab_size, c.d_model});
    if (c.embedding_norm) m.embedding_norm = Norm<T>(c.norm, c.d_model, c.norm_eps);
    for (Index l = 0; l < c.n_layers; ++l) {
      Block<T> b;
      b.placement = c.placement;
      b.branches.push_back({Norm<T>(c.norm, c.d_model, c.norm_eps), std::make_unique<SelfAttention<T>>(c)});
      b.branches.push_back({Norm<T>(c.norm, c.d_model, c.norm_eps),
                            std::make_unique<Mlp<T>>(c.mlp, c.activation, c.d_model, c.d_ff, c.mlp_bias)});
      m.blocks.push_back(std::move(b));
    }
    if (c.final_norm) m.final_norm = Norm<T>(c.norm, c.d_model, c.norm_eps);
    if (!c.tie_embeddings) m.lm_head = Linear<T>(c.d_model, c.vocab_size, false);
    return m;
  }

  /// Calls f(name, tensor) for every parameter (engram's own names, stable across formats).
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) {
    f("embed.weight", embed.weight);
    if (!position_table.empty()) f("position_table", position_table);
    if (!type_table.empty()) f("type_table", type_table);
    auto norm = [&](const std::string& p, Norm<T>& n) {
      if (!n.weight.empty()) f(p + ".weight", n.weight);
      if (!n.bias.empty()) f(p + ".bias", n.bias);
    };
    norm("embedding_norm", embedding_norm);
    for (std::size_t l = 0; l < blocks.size(); ++l)
      for (std::size_t b = 0; b < blocks[l].branches.size(); ++b) {
        const std::string p = "blocks." + std::to_string(l) + "." + std::to_string(b);
        norm(p + ".norm", blocks[l].branches[b].norm);
        blocks[l].branches[b].layer->visit_parameters([&](const std::string& n, Tensor<T>& t) { f(p + "." + n, t); });
      }
    norm("final_norm", final_norm);
    if (!lm_head.weight.empty()) f("lm_head.weight", lm_head.weight);
  }
  /// Number of parameters (a tied head counts once; compressed weights count as many as they hold).
  Index n_params() const {
    Index n = 0;
    const_cast<Decoder*>(this)->visit_parameters([&](const std::string&, Tensor<T>& t) { n += t.numel(); });
    const_cast<Decoder*>(this)->visit_linears([&](const std::string&, Linear<T>& l) {
      if (!l.compressed.empty()) n += l.compressed.rows() * l.compressed.cols();
    });
    return n;
  }

  /// Calls f(name, linear) for every Linear: the blocks' projections ("blocks.L.B.NAME") and an
  /// untied LM head ("lm_head").
  void visit_linears(const std::function<void(const std::string&, Linear<T>&)>& f) {
    for (std::size_t l = 0; l < blocks.size(); ++l)
      for (std::size_t b = 0; b < blocks[l].branches.size(); ++b) {
        const std::string p = "blocks." + std::to_string(l) + "." + std::to_string(b);
        blocks[l].branches[b].layer->visit_linears([&](const std::string& n, Linear<T>& lin) { f(p + "." + n, lin); });
      }
    if (!lm_head.weight.empty() || !lm_head.compressed.empty()) f("lm_head", lm_head);
  }

  /// Stores every Linear (attention, MLP and TTT projections, the LM head) in `format`, for
  /// inference (core/weights.hpp: bf16, f16, q8, q4; f32 changes nothing). Products then stream the
  /// stored bytes and accumulate in fp32. The embedding lookup, norms, biases and a TTT layer's
  /// inner weights stay f32; a head tied to the embedding gets a compressed copy of it for the
  /// logits (the lookup keeps the f32 rows). Training a compressed model is an Error (backward
  /// needs the f32 weights), and so is compressing twice.
  void compress_weights(WeightFormat format) {
    if (format == WeightFormat::f32) return;
    check(weight_format_ == WeightFormat::f32, "Decoder", "the weights are already stored as ", format_name(weight_format_));
    if constexpr (!std::is_same_v<T, float>) {
      fail("Decoder", "compressed weights (", format_name(format), ") need a float model, this one computes in double");
    } else {
      visit_linears([&](const std::string& name, Linear<T>& lin) { lin.compress(format, name + ".weight"); });
      const bool adopted = tied_head_.in_place() && tied_head_.format() == format;  // adopt_tied_head
      if (lm_head.compressed.empty() && !adopted) tied_head_ = CompressedMatrix::quantize(embed.weight.view(), format, "the tied LM head (embed.weight)");
      weight_format_ = format;
    }
  }
  /// Gives a tied LM head the rows `m` ([vocab, d]: the embedding as a mapped checkpoint stores it,
  /// CompressedMatrix::external) for its products, so compress_weights(m's format) makes no copy;
  /// the lookup keeps the f32 embedding.
  void adopt_tied_head(CompressedMatrix m) {
    check(config.tie_embeddings && lm_head.weight.empty() && lm_head.compressed.empty(), "Decoder::adopt_tied_head", "the LM head is not tied");
    check(weight_format_ == WeightFormat::f32 && tied_head_.empty(), "Decoder::adopt_tied_head", "the weights are already stored as ",
          format_name(weight_format_));
    check(m.rows() == embed.weight.rows() && m.cols() == embed.weight.cols(), "Decoder::adopt_tied_head", "expected [", embed.weight.rows(),
          ", ", embed.weight.cols(), "] rows, got [", m.rows(), ", ", m.cols(), "]");
    tied_head_ = std::move(m);
  }
  /// How the Linears are stored (f32 until compress_weights).
  WeightFormat weight_format() const { return weight_format_; }
  /// Bytes of weights a decode step streams: every Linear and the LM head in their stored format.
  std::size_t streamed_weight_bytes() const {
    std::size_t n = 0;
    const_cast<Decoder*>(this)->visit_linears([&](const std::string&, Linear<T>& l) { n += l.weight_bytes(); });
    if (lm_head.weight.empty() && lm_head.compressed.empty())
      n += tied_head_.empty() ? std::size_t(embed.weight.numel()) * sizeof(T) : tied_head_.bytes();
    return n;
  }

  /// Stores the KV caches of states made from now on (make_state) as `format`: f32 (the default,
  /// the model's type), f16 or bf16 (float models only; half the bytes per cached token, rounded to
  /// nearest even, widened back to float as attention reads them). Throws Error for q8/q4 or a
  /// double model. States made before keep their format.
  void set_kv_format(WeightFormat format) {
    check_kv_format<T>(format, "Decoder::set_kv_format");
    kv_format_ = format;
  }
  /// How the KV caches of new states are stored (f32 until set_kv_format).
  WeightFormat kv_format() const { return kv_format_; }

  /// The per-sequence state: caches (and any other layer state), position, FLOP counter, policy.
  class State {
   public:
    /// Tokens processed so far (the absolute position of the next one).
    Index position() const { return position_; }
    FlopCounter flops;
    const CachePolicy<T>* policy() const { return policy_; }
    PolicyState* policy_state() { return policy_state_.get(); }
    /// The KV caches of the attention layers, in order.
    std::vector<LayerCache<T>*> caches() {
      std::vector<LayerCache<T>*> c;
      for (const LayerCache<T>* p : std::as_const(*this).caches()) c.push_back(const_cast<LayerCache<T>*>(p));  // *this is not const
      return c;
    }
    std::vector<const LayerCache<T>*> caches() const {
      std::vector<const LayerCache<T>*> c;
      for (const auto& block : layers_)
        for (const auto& s : block)
          if (s && s->kv_cache()) c.push_back(s->kv_cache());
      return c;
    }
    /// Fraction of the tokens read that the KV caches hold (tokens per KV head, mean over every
    /// head of every attention layer, over the position); 1 before any token and without caches.
    double cache_kept() const {
      Index kept = 0, heads = 0;
      for (const LayerCache<T>* c : caches()) kept += c->total_tokens(), heads += c->n_heads();
      if (heads == 0 || position_ == 0) return 1.0;
      return double(kept) / double(heads) / double(position_);
    }
    /// State of branch `branch` of block `block` (null for stateless layers).
    LayerState<T>* layer_state(Index block, Index branch) { return layers_.at(std::size_t(block)).at(std::size_t(branch)).get(); }
    /// Bytes held by the sequence: layer states (KV caches, ...) and policy state. The reusable
    /// scratch workspace is reported separately.
    std::size_t bytes() const {
      std::size_t b = policy_state_ ? policy_state_->bytes() : 0;
      for (const auto& block : layers_)
        for (const auto& s : block)
          if (s) b += s->bytes();
      return b;
    }
    std::size_t workspace_bytes() const { return ws_.bytes(); }
    /// A deep copy (forks the sequence); the workspace is not copied.
    State copy() const {
      State s;
      s.model_ = model_;
      s.position_ = position_;
      s.flops = flops;
      s.policy_ = policy_;
      s.policy_state_ = policy_state_ ? policy_state_->clone() : nullptr;
      for (const auto& block : layers_) {
        s.layers_.emplace_back();
        for (const auto& st : block) s.layers_.back().push_back(st ? st->clone() : nullptr);
      }
      return s;
    }
    /// Back to an empty sequence (same model and policy).
    void reset() { *this = model_->make_state(policy_); }
    /// Marks the end of the prompt (everything read so far): a policy that compresses once, after
    /// the prompt, does it now (SnapKV's observation window is the prompt's last tokens,
    /// ExpectedAttention's query statistics are the prompt's). Other policies ignore it; tokens
    /// read afterwards (the answer) are appended as usual.
    void end_prompt() {
      if (!policy_) return;
      auto c = caches();
      policy_->end_prompt(c, policy_state_.get(), StepInfo{0, position_, &flops});
    }

   private:
    friend class Decoder;
    const Decoder* model_ = nullptr;
    std::vector<std::vector<std::unique_ptr<LayerState<T>>>> layers_;
    Index position_ = 0;
    const CachePolicy<T>* policy_ = nullptr;
    std::unique_ptr<PolicyState> policy_state_;
    Workspace<T> ws_;
    std::vector<std::int64_t> positions_;
    RopeTable<T> rope_;
  };

  /// A fresh sequence state; `policy` (optional, must outlive the state) manages its KV caches.
  State make_state(const CachePolicy<T>* policy = nullptr) const {
    State s;
    s.model_ = this;
    s.policy_ = policy;
    Index n_attention = 0;
    for (const Block<T>& b : blocks) {
      s.layers_.emplace_back();
      for (const Branch<T>& br : b.branches) {
        s.layers_.back().push_back(br.layer->make_state());
        if (s.layers_.back().back() && s.layers_.back().back()->kv_cache()) ++n_attention;
      }
    }
    for (LayerCache<T>* c : s.caches()) {
      if (config.positions == PositionKind::rope) c->rotation = KeyRotation{inv_freq, config.rope_pairing};
      c->set_format(kv_format_);
    }
    if (policy) {
      s.policy_state_ = policy->make_state(n_attention, config.n_kv_heads);
      for (LayerCache<T>* c : s.caches()) policy->attach(*c);
    }
    return s;
  }

  /// Word embeddings of `tokens` [T, d] (no positions).
  void embed_tokens(std::span<const std::int32_t> tokens, View<T> out) const { embed.lookup(tokens, out); }

  /// One step from word embeddings: adds positions/types (and the embedding norm), runs every block
  /// and the final norm; x [T, d] holds the embeddings on entry and the final hidden states on exit.
  void forward_embeddings(View<T> x, State& s, StepMask mask = {}) const {
    const Index n = x.rows();
    check(n > 0, "Decoder", "a step needs at least one token");
    check_shape(x, -1, config.d_model, "Decoder", "embeddings");
    check(s.model_ == this, "Decoder", "state belongs to another model");
    check_finite<T>(x, "Decoder", "the input embeddings", s.position_);  // NaN policy: inputs are checked (one pass)
    StepContext<T> ctx = begin_step(x, s, mask);
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      try {
        blocks[l].forward(x, s.layers_[l], ctx);
      } catch (const Error& e) {  // a layer's own error, told which block it came from
        fail("Decoder", "block ", l, ": ", e.what());
      }
      // NaN policy: a non-finite hidden state is an Error naming the block and the position. One
      // FMA pass over [T, d] per block (measured at 0.002-0.03% of a block's prefill time for
      // d = 256-1024, T = 512), so the first block that went non-finite is named without re-running.
      if (!all_finite<T>(x)) check_finite<T>(x, "Decoder", "the output of block " + std::to_string(l), s.position_);
    }
    if (config.final_norm) final_norm.forward(x, x);
    end_step(s, n);
  }

  /// out [T, vocab] = hidden [T, d] through the LM head (the embedding when tied).
  void logits(ConstView<T> hidden, View<T> out, FlopCounter* flops = nullptr) const {
    const Index V = config.vocab_size, d = config.d_model;
    if (!lm_head.compressed.empty()) {
      lm_head.forward(hidden, out);
    } else if (!tied_head_.empty()) {
      if constexpr (std::is_same_v<T, float>) {
        matmul_nt(hidden, tied_head_.view(), out);
      }
    } else {
      const Tensor<T>& w = lm_head.weight.empty() ? embed.weight : lm_head.weight;
      matmul_nt<T>(hidden, w.view(), out);
    }
    if (flops) flops->add(FlopCategory::lm_head, flops::gemm(hidden.rows(), V, d));
  }

  /// Runs `tokens` through the model, appending to the state's caches; returns logits of the last
  /// token [1, V], or of every token [T, V] with all_logits. Steps are at most options.chunk tokens
  /// and end where the cache policy needs them to (max_step); the result does not depend on either.
  Tensor<T> prefill(std::span<const std::int32_t> tokens, State& s, PrefillOptions options = {}) const {
    const Index total = Index(tokens.size());
    check(total > 0, "Decoder::prefill", "empty token sequence");
    check(options.chunk >= 0, "Decoder::prefill", "chunk must be >= 0, got ", options.chunk);
    Tensor<T> out({options.all_logits ? total : 1, config.vocab_size});
    for (Index i = 0; i < total;) {
      Index n = total - i;
      if (options.chunk > 0) n = std::min(n, options.chunk);
      if (s.policy_) {
        const Index limit = s.policy_->max_step(s.position_);
        if (limit > 0) n = std::min(n, limit);
      }
      View<T> x = s.ws_.get(7, n, config.d_model);
      embed.lookup(tokens.subspan(std::size_t(i), std::size_t(n)), x);
      forward_embeddings(x, s);
      if (options.all_logits) logits(x, out.view().middle_rows(i, n), &s.flops);
      else if (i + n == total) logits(x.middle_rows(n - 1, 1), out.view(), &s.flops);
      // NaN policy: the logits of every chunk are checked once (finite hidden states can still
      // overflow in the head).
      if (options.all_logits) check_finite<T>(out.view().middle_rows(i, n), "Decoder::prefill", "the logits", s.position_ - n);
      else if (i + n == total) check_finite<T>(out.view(), "Decoder::prefill", "the logits", s.position_ - 1);
      i += n;
    }
    return out;
  }

  /// The LM head's weight [vocab, d] (the embedding when tied).
  /// Training reads it: an Error once the weights are compressed.
  const Tensor<T>& head_weight() const {
    check(weight_format_ == WeightFormat::f32, "Decoder", "the weights are stored as ", format_name(weight_format_),
          ": compressed weights are for inference (train with f32 weights)");
    return lm_head.weight.empty() ? embed.weight : lm_head.weight;
  }

  /// The rotation table of positions 0 .. n - 1 (a training context's `rope`); empty without RoPE.
  RopeTable<T> rope_table(Index n) const {
    if (config.positions != PositionKind::rope) return {};
    std::vector<std::int64_t> positions(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) positions[std::size_t(i)] = i;
    return make_rope_table<T>(inv_freq, positions);
  }

  /// Training forward from word embeddings: x [n_seqs * seq_len, d] (ctx's layout) holds the
  /// embeddings on entry and the final hidden states on exit, as forward_embeddings() would give
  /// on each sequence from a fresh state (positions 0 .. seq_len - 1). Saves what backward() needs
  /// on ctx.tape; blocks with ctx.checkpoint(l) keep only their input.
  void forward_train(View<T> x, TrainContext<T>& ctx) const {
    const char* where = "Decoder::forward_train";
    check(ctx.tape && ctx.workspace, where, "the training context needs a tape and a workspace");
    check(ctx.n_seqs > 0 && ctx.seq_len > 0, where, "expected at least one sequence of at least one token, got ", ctx.n_seqs,
          " x ", ctx.seq_len);
    check_shape(x, ctx.n_seqs * ctx.seq_len, config.d_model, where, "embeddings");
    if (config.positions == PositionKind::learned) {
      check(ctx.seq_len <= config.max_positions, where, "sequences of ", ctx.seq_len, " tokens exceed max_position_embeddings = ",
            config.max_positions);
      for (Index r = 0; r < x.rows(); ++r) simd::add(x.row(r), position_table.row(r % ctx.seq_len), x.row(r), config.d_model);
    }
    if (!type_table.empty())
      for (Index r = 0; r < x.rows(); ++r) simd::add(x.row(r), type_table.row(0), x.row(r), config.d_model);
    if (config.embedding_norm) {
      copy<T>(x, ctx.tape->push(x.rows(), x.cols()));
      embedding_norm.forward(x, x);
    }
    TrainContext<T> c = with_mask(ctx);
    for (std::size_t l = 0; l < blocks.size(); ++l) blocks[l].forward_train(x, c, c.checkpoint && c.checkpoint(Index(l)));
    if (config.final_norm) {
      copy<T>(x, ctx.tape->push(x.rows(), x.cols()));
      final_norm.forward(x, x);
    }
  }

  /// Backward of forward_train: dx holds dL/d(final hidden states) on entry and dL/d(word
  /// embeddings) on exit; every trained parameter's gradient is accumulated into ctx.grads
  /// (except the word embeddings and the LM head: see Embedding::backward and train/loss.hpp).
  void backward(View<T> dx, TrainContext<T>& ctx) const {
    const Index n = dx.rows(), d = config.d_model;
    check_shape(dx, ctx.n_seqs * ctx.seq_len, d, "Decoder::backward", "hidden-state gradient");
    View<T> dy = ctx.workspace->get(0, n, d);
    if (config.final_norm) {
      copy<T>(dx, dy);
      final_norm.backward(ctx.tape->pop(n, d), dy, dx, ctx.grads);
    }
    TrainContext<T> c = with_mask(ctx);
    for (std::size_t l = blocks.size(); l-- > 0;) blocks[l].backward(dx, c, c.checkpoint && c.checkpoint(Index(l)));
    if (config.embedding_norm) {
      copy<T>(dx, dy);
      embedding_norm.backward(ctx.tape->pop(n, d), dy, dx, ctx.grads);
    }
    if (Tensor<T>* g = type_table.empty() ? nullptr : ctx.grad(type_table))
      for (Index r = 0; r < n; ++r) simd::add(g->row(0), dx.row(r), g->row(0), d);
    if (Tensor<T>* g = config.positions == PositionKind::learned ? ctx.grad(position_table) : nullptr)
      for (Index r = 0; r < n; ++r) simd::add(g->row(r % ctx.seq_len), dx.row(r), g->row(r % ctx.seq_len), d);
  }

  /// One token; returns its logits [1, V].
  Tensor<T> decode(std::int32_t token, State& s) const { return prefill(std::span<const std::int32_t>(&token, 1), s); }

  /// One token for each of several sequences in one step (batched decode, for serving many users):
  /// tokens[b] continues *states[b] (distinct states of this model, at any positions, each with its
  /// own cache policy or none). Returns the logits [B, V]; row b equals decode(tokens[b], *states[b]).
  /// Every projection and the LM head run as one product over the batch, so each weight is read
  /// once per step instead of once per sequence; attention runs per sequence against its own cache.
  /// Up to weight_gemm::kMaxRows (16) sequences take the one-row kernel's exact arithmetic (rows of
  /// a batch are computed as they would be alone); more take the packed GEMM (within rounding).
  Tensor<T> decode_batch(std::span<const std::int32_t> tokens, std::span<State* const> states) const {
    const char* where = "Decoder::decode_batch";
    const Index B = Index(tokens.size()), d = config.d_model;
    check(B >= 1, where, "at least one sequence");
    check(Index(states.size()) == B, where, "one state per token: ", B, " tokens, ", states.size(), " states");
    for (Index b = 0; b < B; ++b) {
      const State* s = states[std::size_t(b)];
      check(s != nullptr && s->model_ == this, where, "state ", b, " is null or belongs to another model");
      for (Index c = 0; c < b; ++c) check(states[std::size_t(c)] != s, where, "state ", b, " is also state ", c, ": each sequence once");
      check(config.positions != PositionKind::learned || s->position_ + 1 <= config.max_positions, where, "sequence ", b, " of ",
            s->position_ + 1, " tokens exceeds max_position_embeddings = ", config.max_positions);
    }
    State& s0 = *states.front();
    View<T> x = s0.ws_.get(7, B, d);
    embed.lookup(tokens, x);
    // Reused across steps (begin_step makes a fresh context for every sequence and step).
    thread_local std::vector<StepContext<T>> ctxs;
    thread_local std::vector<StepContext<T>*> ctx_of;
    thread_local std::vector<std::span<const std::unique_ptr<LayerState<T>>>> layer_states;
    ctxs.resize(static_cast<std::size_t>(B));
    ctx_of.resize(static_cast<std::size_t>(B));
    layer_states.resize(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) {
      ctxs[std::size_t(b)] = begin_step(x.middle_rows(b, 1), *states[std::size_t(b)]);
      ctx_of[std::size_t(b)] = &ctxs[std::size_t(b)];
    }
    check_finite<T>(x, where, "the input embeddings", 0);
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      for (Index b = 0; b < B; ++b) layer_states[std::size_t(b)] = states[std::size_t(b)]->layers_[l];
      try {
        blocks[l].forward_batch(x, layer_states, ctx_of);
      } catch (const Error& e) {
        fail("Decoder", "block ", l, ": ", e.what());
      }
      if (!all_finite<T>(x)) check_finite<T>(x, where, "the output of block " + std::to_string(l), 0);
    }
    if (config.final_norm) final_norm.forward(x, x);
    Tensor<T> out({B, config.vocab_size});
    batched_rows<T>(std::span<StepContext<T>* const>(ctx_of), [&](StepContext<T>& c) { logits(x, out.view(), c.flops); });
    for (Index b = 0; b < B; ++b) end_step(*states[std::size_t(b)], 1);
    check_finite<T>(out.view(), where, "the logits", 0);
    return out;
  }

 private:
  // The start of a step of x.rows() tokens of s: positions, learned positions / token types /
  // embedding norm added to the embeddings x in place, the RoPE table; the layers' context.
  StepContext<T> begin_step(View<T> x, State& s, StepMask mask = {}) const {
    const Index n = x.rows();
    s.positions_.resize(std::size_t(n));
    for (Index i = 0; i < n; ++i) s.positions_[std::size_t(i)] = s.position_ + i;
    if (config.positions == PositionKind::learned) {
      check(s.position_ + n <= config.max_positions, "Decoder", "sequence of ", s.position_ + n,
            " tokens exceeds max_position_embeddings = ", config.max_positions);
      for (Index i = 0; i < n; ++i) simd::add(x.row(i), position_table.row(s.position_ + i), x.row(i), config.d_model);
    }
    if (!type_table.empty())
      for (Index i = 0; i < n; ++i) simd::add(x.row(i), type_table.row(0), x.row(i), config.d_model);
    if (config.embedding_norm) embedding_norm.forward(x, x);
    if (config.positions == PositionKind::rope) fill_rope_table<T>(s.rope_, inv_freq, s.positions_);
    StepContext<T> ctx;
    ctx.positions = s.positions_;
    ctx.rope = config.positions == PositionKind::rope ? &s.rope_ : nullptr;
    ctx.flops = &s.flops;
    ctx.workspace = &s.ws_;
    ctx.tokens_seen = s.position_;
    ctx.mask = (mask.kind == MaskKind::causal && !config.causal) ? MaskKind::none : mask.kind;
    ctx.custom_mask = mask.custom;
    ctx.policy = s.policy_;
    ctx.policy_state = s.policy_state_.get();
    return ctx;
  }

  // The end of a step of n tokens: the position advances and the cache policy acts.
  void end_step(State& s, Index n) const {
    s.position_ += n;
    if (s.policy_) {
      auto caches = s.caches();
      s.policy_->after_step(caches, s.policy_state_.get(), StepInfo{n, s.position_, &s.flops});
    }
  }

  CompressedMatrix tied_head_;                   ///< the tied LM head's compressed copy (compress_weights)
  WeightFormat weight_format_ = WeightFormat::f32;
  WeightFormat kv_format_ = WeightFormat::f32;

  // A bidirectional model's default mask is "none" (as in forward_embeddings).
  TrainContext<T> with_mask(const TrainContext<T>& ctx) const {
    TrainContext<T> c = ctx;
    if (c.mask == MaskKind::causal && !config.causal) c.mask = MaskKind::none;
    return c;
  }
};

/// A bidirectional encoder (BERT-style) is the same stack with config.causal = false.
template <class T>
using Encoder = Decoder<T>;

ENGRAM_NAMESPACE_END
