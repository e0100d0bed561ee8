// The one interface the accuracy harness scores: a model that reads tokens and gives the
// log-probability of a continuation, with sessions that fork (one per candidate answer). Adapters
// for a Decoder (attention or TTT blocks) with or without a KV-cache policy live here; RMT and
// ARMT wrappers have theirs in eval/rmt_reader.hpp.
#pragma once

#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engram/nn/decoder.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// One sequence being read.
class Session {
 public:
  virtual ~Session() = default;
  /// Consumes `tokens` (context: no scores).
  virtual void read(std::span<const std::int32_t> tokens) = 0;
  /// log p(continuation[i] | everything read so far, continuation[0..i)) for every i (natural
  /// log), into out; the continuation is consumed too. Needs at least one token read before.
  virtual void score(std::span<const std::int32_t> continuation, std::span<double> out) = 0;
  /// Marks the end of the prompt (the context and question read so far): policies that compress
  /// once, after the prompt (SnapKV, ExpectedAttention), do it here. Nothing for other models.
  virtual void end_prompt() {}
  /// An independent copy of this session (the model is shared).
  virtual std::unique_ptr<Session> fork() const = 0;
  /// Bytes of per-sequence state held now (KV caches, memories, inner weights).
  virtual std::size_t state_bytes() const = 0;
  /// Fraction of the tokens read so far that the KV caches hold (Decoder::State::cache_kept: tokens
  /// per KV head over the position): 1 for a full cache and for models whose state is not a cache
  /// of tokens (RMT memory, TTT weights).
  virtual double cache_kept() const { return 1.0; }
};

/// A model the harness can score.
class Reader {
 public:
  virtual ~Reader() = default;
  virtual std::unique_ptr<Session> start() const = 0;
  virtual std::string describe() const = 0;
  virtual Index vocab_size() const = 0;
};

namespace detail {
/// log softmax(logits)[label] in double.
template <class T>
double log_prob(const T* logits, Index n, std::int32_t label) {
  check(label >= 0 && label < n, "eval", "token ", label, " outside the vocabulary [0, ", n, ")");
  double m = -INFINITY;
  for (Index i = 0; i < n; ++i) m = std::max(m, double(logits[i]));
  check(std::isfinite(m), "eval", "non-finite logits: the model produced NaN or infinity");
  double s = 0;
  for (Index i = 0; i < n; ++i) s += std::exp(double(logits[i]) - m);
  return double(logits[label]) - m - std::log(s);
}
}  // namespace detail

/// A Decoder (attention, TTT or any blocks), optionally with a KV-cache policy managing its caches.
template <class T>
class DecoderReader final : public Reader {
 public:
  /// `model` and `policy` (may be null) must outlive the reader. `chunk` caps prefill steps.
  DecoderReader(const Decoder<T>& model, const CachePolicy<T>* policy = nullptr, std::string name = "", Index chunk = 512)
      : model_(model), policy_(policy), name_(std::move(name)), chunk_(chunk) {}

  class DecoderSession final : public Session {
   public:
    DecoderSession(const DecoderReader& r, typename Decoder<T>::State s) : r_(r), state_(std::move(s)) {}
    void read(std::span<const std::int32_t> tokens) override {
      if (tokens.empty()) return;
      last_ = r_.model_.prefill(tokens, state_, {.chunk = r_.chunk_});
    }
    void score(std::span<const std::int32_t> cont, std::span<double> out) override {
      check(out.size() == cont.size(), "eval::Session::score", "expected ", cont.size(), " outputs, got ", out.size());
      check(!last_.empty(), "eval::Session::score", "read at least one token before scoring a continuation");
      if (cont.empty()) return;
      const Index V = r_.model_.config.vocab_size;
      out[0] = detail::log_prob(last_.row(0), V, cont[0]);
      // Every continuation token's logits, in chunks, so the next one's probability is known.
      for (std::size_t i = 0; i < cont.size();) {
        const std::size_t n = std::min<std::size_t>(cont.size() - i, std::size_t(r_.chunk_));
        const Tensor<T> logits = r_.model_.prefill(cont.subspan(i, n), state_, {.chunk = r_.chunk_, .all_logits = true});
        for (std::size_t j = 0; j < n; ++j)
          if (i + j + 1 < cont.size()) out[i + j + 1] = detail::log_prob(logits.row(Index(j)), V, cont[i + j + 1]);
        last_ = Tensor<T>({1, V});
        std::copy_n(logits.row(Index(n) - 1), V, last_.row(0));
        i += n;
      }
    }
    void end_prompt() override { state_.end_prompt(); }
    std::unique_ptr<Session> fork() const override {
      auto s = std::make_unique<DecoderSession>(r_, state_.copy());
      s->last_ = last_.copy();
      return s;
    }
    std::size_t state_bytes() const override { return state_.bytes(); }
    double cache_kept() const override { return state_.cache_kept(); }
    const typename Decoder<T>::State& state() const { return state_; }

   private:
    const DecoderReader& r_;
    typename Decoder<T>::State state_;
    Tensor<T> last_;  // [1, V] logits after the last token read
  };

  std::unique_ptr<Session> start() const override { return std::make_unique<DecoderSession>(*this, model_.make_state(policy_)); }
  std::string describe() const override {
    if (!name_.empty()) return name_;
    return model_.config.architecture + (policy_ ? " + " + policy_->name() : std::string(" (full cache)"));
  }
  Index vocab_size() const override { return model_.config.vocab_size; }

 private:
  const Decoder<T>& model_;
  const CachePolicy<T>* policy_;
  std::string name_;
  Index chunk_;
};

}  // namespace eval
ENGRAM_NAMESPACE_END
