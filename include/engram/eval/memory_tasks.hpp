// Task accuracy: the memory tasks of tasks/ (fact memorization, detection, reasoning) at a given
// length, answered by the model's likelihood of each of the 6 candidate answers, over seeded
// held-out samples, with a Wilson confidence interval.
#pragma once

#include <chrono>
#include <functional>
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
  std::vector<int> predictions;   ///< predicted class per sample
};

/// Options of score_task.
struct TaskEvalOptions {
  Index samples = 100;
  Index first_sample = 0;   ///< sample i uses eval_seed(first_sample + i)
  Index read_chunk = 65536; ///< tokens handed to the session at once (samples stream; no sample is held whole)
  bool parallel = true;     ///< samples in parallel over threads (each model call then runs single-threaded)
};

/// Reads each sample's context, then scores the 6 candidate answers (tasks/answer.hpp) from forks of
/// the session; the prediction is the most likely candidate (ties: the lower class id).
inline TaskScore score_task(const Reader& reader, const tasks::Corpus& corpus, const tasks::TaskOptions& task, const TaskEvalOptions& o = {}) {
  check(o.samples > 0, "eval::score_task", "need at least one sample, got ", o.samples);
  const auto t0 = std::chrono::steady_clock::now();
  TaskScore score;
  score.options = task;
  score.samples = o.samples;
  score.predictions.assign(std::size_t(o.samples), -1);
  std::vector<double> answer_lp(std::size_t(o.samples));
  std::vector<std::size_t> bytes(std::size_t(o.samples));
  std::vector<int> truth(std::size_t(o.samples));
  auto one = [&](Index i) {
    tasks::SampleStream stream(corpus, task, eval_seed(o.first_sample + i));
    truth[std::size_t(i)] = stream.info().answer;
    auto session = reader.start();
    std::vector<std::int32_t> chunk(std::size_t(std::min(o.read_chunk, task.length)));
    while (stream.remaining() > 0) {
      const Index n = stream.read(chunk);
      session->read(std::span(chunk).first(std::size_t(n)));
    }
    bytes[std::size_t(i)] = session->state_bytes();
    double best = -INFINITY;
    for (int c = 0; c < int(tasks::kAnswerClasses); ++c) {
      const std::vector<std::int32_t> cand = tasks::ByteTokenizer::encode(tasks::answer_bytes(c));
      std::vector<double> lp(cand.size());
      session->fork()->score(cand, lp);
      double total = 0;
      for (double v : lp) total += v;
      if (c == truth[std::size_t(i)]) answer_lp[std::size_t(i)] = total;
      if (total > best) best = total, score.predictions[std::size_t(i)] = c;
    }
  };
  parallel_for(0, o.samples, one, o.parallel);
  for (Index i = 0; i < o.samples; ++i) {
    score.correct += score.predictions[std::size_t(i)] == truth[std::size_t(i)];
    score.answer_log_prob += answer_lp[std::size_t(i)] / double(o.samples);
    score.peak_state_bytes = std::max(score.peak_state_bytes, bytes[std::size_t(i)]);
  }
  score.accuracy = double(score.correct) / double(o.samples);
  score.ci = wilson(score.correct, o.samples);
  score.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return score;
}

}  // namespace eval
ENGRAM_NAMESPACE_END
