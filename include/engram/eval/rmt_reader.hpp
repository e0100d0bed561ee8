// The accuracy harness's Reader over an RMT or ARMT streaming wrapper (rmt::RecurrentWrapper,
// rmt::ArmtWrapper): reading pushes tokens segment by segment in constant memory, scoring continues
// the last segment (the wrappers' score(), by default as an answer: rmt::Continuation), forking
// copies the sequence state.
#pragma once

#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engram/eval/reader.hpp"
#include "engram/rmt/recurrent.hpp"
#include "engram/tasks/answer.hpp"
#include "engram/tasks/tokenizer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// A Reader over any wrapper W with make_state(), push(tokens, state), score(continuation, state,
/// out, mode), State::copy() and State::bytes() (RMT and ARMT, decoder layout). Scored
/// continuations are answers: by default (rmt::answer_continuation) they continue the last segment
/// as the official RMT generate does (Continuation::answer; a session is finished after one), or,
/// on a learned position table, are streamed as more of the sequence (Continuation::stream).
/// `model` must outlive the reader.
template <class W>
class MemoryReader final : public Reader {
 public:
  explicit MemoryReader(const W& model, std::string name = "", std::optional<rmt::Continuation> mode = {})
      : model_(model), name_(std::move(name)), mode_(mode.value_or(rmt::answer_continuation(model.backbone().config))) {}
  rmt::Continuation continuation() const { return mode_; }

  class MemorySession final : public Session {
   public:
    MemorySession(const W& model, typename W::State s, rmt::Continuation mode) : model_(model), state_(std::move(s)), mode_(mode) {}
    void read(std::span<const std::int32_t> tokens) override {
      if (!tokens.empty()) model_.push(tokens, state_);
    }
    void score(std::span<const std::int32_t> continuation, std::span<double> out) override {
      model_.score(continuation, state_, out, mode_);
    }
    std::unique_ptr<Session> fork() const override { return std::make_unique<MemorySession>(model_, state_.copy(), mode_); }
    /// The state carried between segments (memory, buffered tokens; ARMT's associative matrices).
    std::size_t state_bytes() const override { return state_.bytes(); }
    const typename W::State& state() const { return state_; }

   private:
    const W& model_;
    typename W::State state_;
    rmt::Continuation mode_;
  };

  std::unique_ptr<Session> start() const override { return std::make_unique<MemorySession>(model_, model_.make_state(), mode_); }
  std::string describe() const override { return name_.empty() ? model_.describe() : name_; }
  Index vocab_size() const override { return model_.backbone().config.vocab_size; }

 private:
  const W& model_;
  std::string name_;
  rmt::Continuation mode_;
};

/// The most likely of the memory tasks' answer classes (an index into tasks::kPlaces) after
/// everything pushed into `s`: each candidate answer's log-likelihood summed on its own copy of the
/// state (`s` is unchanged), the six-way choice score_task makes; `mode` as in MemoryReader.
template <class W>
int most_likely_answer(const W& model, const typename W::State& s, std::optional<rmt::Continuation> continuation = {}) {
  const rmt::Continuation mode = continuation.value_or(rmt::answer_continuation(model.backbone().config));
  int pick = -1;
  double best = -std::numeric_limits<double>::infinity();
  for (int c = 0; c < int(tasks::kAnswerClasses); ++c) {
    auto fork = s.copy();
    const auto candidate = tasks::ByteTokenizer::encode(tasks::answer_bytes(c));
    std::vector<double> lp(candidate.size());
    model.score(candidate, fork, lp, mode);
    double total = 0;
    for (double v : lp) total += v;
    if (pick < 0 || total > best) best = total, pick = c;
  }
  return pick;
}

}  // namespace eval
ENGRAM_NAMESPACE_END
