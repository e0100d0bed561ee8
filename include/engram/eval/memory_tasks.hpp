// Task accuracy: the memory tasks of tasks/ (fact memorization, detection, reasoning) at a given
// length, answered by the model's likelihood of each of the 6 candidate answers, over seeded
// held-out samples, with a Wilson confidence interval. Byte-level models read the samples as byte
// tokens (streamed); a model with its own tokenizer reads them in its tokens (a TextEncoder).
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/eval/reader.hpp"
#include "engram/eval/stats.hpp"
#include "engram/tasks/answer.hpp"
#include "engram/tasks/memory_tasks.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// Sample seeds of the evaluation: a stream disjoint from the training sources' (train/data.hpp),
/// so no evaluated sample was ever trained on or used for model selection.
inline std::uint64_t eval_seed(Index i) { return tasks::mix_seed(0xE7A1'5EED'0000'0001ull + std::uint64_t(i)); }

/// The score of one task at one length.
struct TaskScore {
  tasks::TaskOptions options;
  Index samples = 0, correct = 0;
  double accuracy = 0;
  Interval ci;                    ///< 95% Wilson interval of the accuracy
  double answer_log_prob = 0;     ///< mean log p(correct answer bytes) (nats)
  double seconds = 0;             ///< wall time of the whole evaluation
  std::size_t peak_state_bytes = 0;  ///< largest per-sequence state seen (after reading a sample)
  double mean_cache_kept = 1;     ///< Session::cache_kept() after reading a sample, averaged over samples
  double mean_tokens = 0;         ///< tokens read per sample (= the length in bytes for byte tokens)
  std::vector<int> predictions;   ///< predicted class per sample
};

/// Text to a model's token ids (e.g. a tokenizer's encode): `add_special` asks for the template of
/// a whole document (BOS, ...), false for text that continues what was read. Called from several
/// threads at once when samples run in parallel.
using TextEncoder = std::function<std::vector<std::int32_t>(std::string_view text, bool add_special)>;

/// Options of score_task.
struct TaskEvalOptions {
  Index samples = 100;
  Index first_sample = 0;   ///< sample i uses eval_seed(first_sample + i)
  /// Set: sample i uses seed_of(i) instead (e.g. a fitness's own stream of fresh samples, disjoint
  /// from the held-out eval_seed stream).
  std::function<std::uint64_t(Index)> seed_of = {};
  Index read_chunk = 65536; ///< tokens handed to the session at once (samples stream; no sample is held whole)
  bool parallel = true;     ///< samples in parallel over threads (each model call then runs single-threaded)
  /// Empty: the samples are byte tokens (tasks::ByteTokenizer), streamed; task lengths are tokens.
  /// Set: each sample's text (background, facts, question; `length` bytes) is encoded whole with
  /// it, and each candidate answer is what the answer adds to the question's ids
  /// (encode(question + answer) past encode(question)), so it is tokenized as it would follow the
  /// question in running text.
  TextEncoder encode = {};
};

namespace detail {
/// Throws Error unless every id is in [0, vocab).
inline void check_ids(std::span<const std::int32_t> ids, Index vocab, std::string_view what) {
  for (std::size_t i = 0; i < ids.size(); ++i)
    check(ids[i] >= 0 && ids[i] < vocab, "eval::score_task", what, ": token ", ids[i], " at index ", i,
          " is outside the model's vocabulary [0, ", vocab, ")");
}

/// The ids answer class `cls` adds after `question` in `encode`'s tokens.
inline std::vector<std::int32_t> encoded_answer(const TextEncoder& encode, const std::string& question, int cls) {
  const std::vector<std::int32_t> q = encode(question, false), qa = encode(question + tasks::answer_bytes(cls), false);
  const bool prefix = qa.size() > q.size() && std::equal(q.begin(), q.end(), qa.begin());
  check(prefix, "eval::score_task", "the tokenizer merges the end of the question \"", question, "\" with the answer \"",
        tasks::answer_bytes(cls), "\": the answer has no tokens of its own to score");
  return {qa.begin() + std::ptrdiff_t(q.size()), qa.end()};
}
}  // namespace detail

/// Reads each sample's context (the question last), marks the end of the prompt (Session::end_prompt:
/// policies that compress once do it there), then scores the 6 candidate answers (tasks/answer.hpp)
/// from forks of the session; the prediction is the most likely candidate (ties: the lower class id). Tokens
/// outside the reader's vocabulary (a tokenizer that does not fit the model) are an Error.
inline TaskScore score_task(const Reader& reader, const tasks::Corpus& corpus, const tasks::TaskOptions& task, const TaskEvalOptions& o = {}) {
  check(o.samples > 0, "eval::score_task", "need at least one sample, got ", o.samples);
  const auto t0 = std::chrono::steady_clock::now();
  TaskScore score;
  score.options = task;
  score.samples = o.samples;
  score.predictions.assign(std::size_t(o.samples), -1);
  std::vector<double> answer_lp(std::size_t(o.samples));
  std::vector<std::size_t> bytes(std::size_t(o.samples));
  std::vector<double> kept(std::size_t(o.samples));
  std::vector<Index> read(std::size_t(o.samples));
  std::vector<int> truth(std::size_t(o.samples));
  const Index vocab = reader.vocab_size();
  auto one = [&](Index i) {
    tasks::SampleStream stream(corpus, task, o.seed_of ? o.seed_of(i) : eval_seed(o.first_sample + i));
    truth[std::size_t(i)] = stream.info().answer;
    auto session = reader.start();
    std::vector<std::int32_t> chunk(std::size_t(std::min(o.read_chunk, task.length)));
    std::vector<std::vector<std::int32_t>> candidates(tasks::kAnswerClasses);
    if (!o.encode) {
      while (stream.remaining() > 0) {
        const Index n = stream.read(chunk);
        session->read(std::span(chunk).first(std::size_t(n)));
      }
      read[std::size_t(i)] = task.length;
      for (int c = 0; c < int(tasks::kAnswerClasses); ++c) candidates[std::size_t(c)] = tasks::ByteTokenizer::encode(tasks::answer_bytes(c));
    } else {
      std::string text;
      text.reserve(std::size_t(task.length));
      while (stream.remaining() > 0) {
        const Index n = stream.read(chunk);
        for (Index j = 0; j < n; ++j) text.push_back(char(static_cast<unsigned char>(chunk[std::size_t(j)])));
      }
      const std::vector<std::int32_t> ids = o.encode(text, true);
      detail::check_ids(ids, vocab, "the sample's text");
      for (std::size_t at = 0; at < ids.size(); at += std::size_t(o.read_chunk))
        session->read(std::span(ids).subspan(at, std::min(ids.size() - at, std::size_t(o.read_chunk))));
      read[std::size_t(i)] = Index(ids.size());
      for (int c = 0; c < int(tasks::kAnswerClasses); ++c) {
        candidates[std::size_t(c)] = detail::encoded_answer(o.encode, stream.info().question, c);
        detail::check_ids(candidates[std::size_t(c)], vocab, "the answer");
      }
    }
    session->end_prompt();  // the question was the prompt's end: SnapKV and ExpectedAttention compress here
    bytes[std::size_t(i)] = session->state_bytes();
    kept[std::size_t(i)] = session->cache_kept();
    double best = -INFINITY;
    for (int c = 0; c < int(tasks::kAnswerClasses); ++c) {
      const std::vector<std::int32_t>& cand = candidates[std::size_t(c)];
      std::vector<double> lp(cand.size());
      session->fork()->score(cand, lp);
      double total = 0;
      for (double v : lp) total += v;
      if (c == truth[std::size_t(i)]) answer_lp[std::size_t(i)] = total;
      if (total > best) best = total, score.predictions[std::size_t(i)] = c;
    }
  };
  parallel_for(0, o.samples, one, o.parallel);
  double mean_kept = 0;
  for (Index i = 0; i < o.samples; ++i) {
    score.correct += score.predictions[std::size_t(i)] == truth[std::size_t(i)];
    score.answer_log_prob += answer_lp[std::size_t(i)] / double(o.samples);
    score.peak_state_bytes = std::max(score.peak_state_bytes, bytes[std::size_t(i)]);
    mean_kept += kept[std::size_t(i)] / double(o.samples);
    score.mean_tokens += double(read[std::size_t(i)]) / double(o.samples);
  }
  score.mean_cache_kept = mean_kept;
  score.accuracy = double(score.correct) / double(o.samples);
  score.ci = wilson(score.correct, o.samples);
  score.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return score;
}

}  // namespace eval
ENGRAM_NAMESPACE_END
