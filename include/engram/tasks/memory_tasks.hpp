// The scaling report's three memory tasks (rmt.md 4.1) at any length, byte-tokenised, seeded and
// deterministic: fact memorization (fact at the start), fact detection & memorization (fact at the
// start of a random segment, or at a random offset) and reasoning over two qa4 facts; background
// text from a Corpus, the question in the last tokens, the answer one of 6 classes. Samples stream
// in chunks, so a million-token sample needs no million-token buffer.
//
// Where this differs from the report's code (rmt.md 4.1) and why:
// - bytes instead of BERT word pieces and fortunes (or any text) instead of QuALITY articles, so a
//   task needs no tokenizer file and no download;
// - a fact goes exactly to its segment's start (the report's index seg * 499 + 1 lands 2 tokens in,
//   an artefact of its [CLS] bookkeeping);
// - the reasoning pairs come from a qa4-style generator (the report's CSV of bAbI qa4 pairs is not
//   published); its questions are both bAbI forms, direct and inverse, with 6 place answers.
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "engram/tasks/babi.hpp"
#include "engram/tasks/corpus.hpp"
#include "engram/tasks/tokenizer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

enum class Task {
  fact_memorization,  ///< one qa1 fact at token 0
  fact_detection,     ///< one qa1 fact at the start of a uniformly drawn segment
  reasoning           ///< two qa4 facts, each at the start of an independently drawn segment
};

inline std::string_view name(Task t) {
  switch (t) {
    case Task::fact_memorization: return "fact_memorization";
    case Task::fact_detection: return "fact_detection";
    case Task::reasoning: return "reasoning";
  }
  return "?";
}

/// The task named `text` (as name() spells it); Error otherwise.
inline Task parse_task(std::string_view text) {
  for (Task t : {Task::fact_memorization, Task::fact_detection, Task::reasoning})
    if (name(t) == text) return t;
  throw Error(std::string("tasks::parse_task: unknown task \"") + std::string(text) + "\", expected fact_memorization, fact_detection or reasoning");
}

/// The question forms named `text` (both, direct or inverse); Error otherwise.
inline Questions parse_questions(std::string_view text) {
  for (Questions q : {Questions::both, Questions::direct, Questions::inverse})
    if (name(q) == text) return q;
  throw Error(std::string("tasks::parse_questions: unknown question forms \"") + std::string(text) + "\", expected both, direct or inverse");
}

struct TaskOptions {
  Task task = Task::fact_memorization;
  Index length = 0;        ///< tokens per sample, question included
  /// Facts go to segment starts of a split into segments of this size (the RMT's segment size);
  /// 0: anywhere before the question (uniform offset).
  Index segment_size = 0;
  bool right_aligned = false;  ///< segment starts of a right-aligned split (the first segment short)
  Questions questions = Questions::both;  ///< reasoning: the qa4 question forms asked (other tasks: ignored)
};

/// Tokens [begin, begin + size) of a sample.
struct Span {
  Index begin = 0, size = 0;
  Index end() const { return begin + size; }
  bool operator==(const Span&) const = default;
};

/// Everything about a sample except its tokens.
struct SampleInfo {
  TaskOptions options;
  std::vector<std::string> facts;  ///< in text order
  std::vector<Span> fact_spans;    ///< where each fact's bytes are, same order
  std::string question;
  Span question_span;              ///< always the last question.size() tokens
  int answer = 0;                  ///< class id into kPlaces
  std::string_view answer_text() const { return kPlaces[std::size_t(answer)]; }
};

/// The tokens of one sample, produced in order in chunks of any size. Background bytes are drawn for
/// every position, so the background does not depend on where the facts land; facts and the
/// question overwrite it (as the report overwrites noise tokens).
class SampleStream {
 public:
  /// `corpus` must outlive the stream. Throws Error when the facts and question do not fit.
  SampleStream(const Corpus& corpus, const TaskOptions& options, std::uint64_t seed)
      : background_(corpus, mix_seed(seed ^ kBackgroundStream)) {
    const char* where = "tasks::SampleStream";
    check(options.length > 0, where, "length must be positive, got ", options.length);
    check(options.segment_size >= 0, where, "segment_size must be >= 0, got ", options.segment_size);
    info_.options = options;
    Rng rng(mix_seed(seed));
    QA qa = options.task == Task::reasoning ? qa4_facts(rng, options.questions) : qa1_fact(rng);
    info_.facts = std::move(qa.facts);
    info_.question = std::move(qa.question);
    info_.answer = qa.answer;
    const Index q = Index(info_.question.size());
    // Facts that share a segment are one byte apart; `needed` is the room all of them take.
    Index needed = Index(info_.facts.size()) - 1;
    for (const auto& f : info_.facts) needed += Index(f.size());
    check(options.length >= needed + q, where, name(options.task), " needs at least ", needed + q,
          " tokens for its facts and question, got length ", options.length);
    if (options.segment_size > 0 && options.task != Task::fact_memorization)
      check(options.segment_size >= needed, where, "segment_size ", options.segment_size, " cannot hold the facts (", needed,
            " tokens) at a segment start");
    info_.question_span = {options.length - q, q};
    place_facts(rng, needed);
  }

  const SampleInfo& info() const { return info_; }
  Index position() const { return position_; }
  Index remaining() const { return info_.options.length - position_; }

  /// Writes the next min(out.size(), remaining()) tokens into out; returns how many.
  Index read(std::span<std::int32_t> out) {
    const Index n = std::min(Index(out.size()), remaining());
    for (Index i = 0; i < n; ++i, ++position_) {
      std::int32_t token = background_.next();
      if (position_ >= info_.question_span.begin) {
        token = static_cast<unsigned char>(info_.question[std::size_t(position_ - info_.question_span.begin)]);
      } else {
        for (std::size_t f = 0; f < info_.fact_spans.size(); ++f) {
          const Span& sp = info_.fact_spans[f];
          if (position_ >= sp.begin && position_ < sp.end())
            token = static_cast<unsigned char>(info_.facts[f][std::size_t(position_ - sp.begin)]);
        }
      }
      out[std::size_t(i)] = token;
    }
    return n;
  }

 private:
  static constexpr std::uint64_t kBackgroundStream = 0xB4C6'9A0B'1D5E'33F7ull;  // any constant != 0: a separate stream

  // Start of a segment that leaves `needed` tokens before the question, uniformly among them; or a
  // uniform offset when there are no segments.
  Index draw_start(Rng& rng, Index needed) const {
    const Index limit = info_.question_span.begin - needed;  // last admissible start, >= 0
    const Index s = info_.options.segment_size;
    if (s == 0) return rng.between(0, limit);
    const Index r = info_.options.length % s;
    if (!info_.options.right_aligned || r == 0) return s * rng.between(0, limit / s);
    // Right-aligned starts: 0, r, r + s, r + 2s, ...; a first segment shorter than the facts is
    // skipped, so facts in different segments never overlap.
    const Index later = limit >= r ? (limit - r) / s + 1 : 0;
    const Index k0 = r < needed ? 1 : 0;
    check(later >= k0, "tasks::SampleStream", "no segment start leaves ", needed, " tokens before the question (length ",
          info_.options.length, ", segment_size ", s, ")");
    const Index k = rng.between(k0, later);
    return k == 0 ? 0 : r + (k - 1) * s;
  }

  void place_facts(Rng& rng, Index needed) {
    const Index first = Index(info_.facts[0].size());
    switch (info_.options.task) {
      case Task::fact_memorization: info_.fact_spans = {{0, first}}; break;
      case Task::fact_detection: info_.fact_spans = {{draw_start(rng, needed), first}}; break;
      case Task::reasoning: {
        const Index second = Index(info_.facts[1].size());
        Index a = draw_start(rng, needed), b = draw_start(rng, needed);
        if (info_.options.segment_size == 0) {  // two offsets in order, the second shifted past the first fact
          if (a > b) std::swap(a, b);
          info_.fact_spans = {{a, first}, {b + first + 1, second}};
        } else if (a == b) {  // same segment: the second fact right after the first (rmt.md 4.1)
          info_.fact_spans = {{a, first}, {a + first + 1, second}};
        } else {
          info_.fact_spans = {{a, first}, {b, second}};
        }
        break;
      }
    }
  }

  SampleInfo info_;
  BackgroundStream background_;
  Index position_ = 0;
};

/// A whole sample: its tokens and what they hold.
struct Sample {
  std::vector<std::int32_t> tokens;
  SampleInfo info;
};

/// Generates the sample of `seed` (same seed, options and corpus: same bytes, on every machine).
inline Sample make_sample(const Corpus& corpus, const TaskOptions& options, std::uint64_t seed) {
  SampleStream stream(corpus, options, seed);
  Sample s;
  s.tokens.resize(std::size_t(options.length));
  stream.read(s.tokens);
  s.info = stream.info();
  return s;
}

}  // namespace tasks
ENGRAM_NAMESPACE_END
