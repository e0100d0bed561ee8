// NAMM's fitness on a trained host, as the official recipe computes it (namm.md 7): the host's
// score on memory-task samples read with the evicting cache, normalised by the full cache's score
// on the same samples, averaged over the stage's tasks. Every generation draws fresh samples, shared
// by the whole population, from a stream disjoint from the held-out samples of eval_seed.
//
// Where this differs from the official recipe and why:
// - the score is the likelihood of the correct answer among the task's 6 candidates (or the
//   accuracy of the most likely one) instead of a LongBench metric of greedy generation: the tasks
//   are classification; the likelihood is the default because with a few dozen samples the accuracy
//   moves in steps of 1/samples and gives CMA-ES's ranking many ties;
// - the likelihood is normalised by difference (log p_namm - log p_full, nats), not by ratio: a
//   ratio of negative log-likelihoods inverts the order; accuracy is normalised by ratio as in
//   the official code.
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "engram/eval/memory_tasks.hpp"
#include "engram/namm/checkpoint.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// What a member's task score is.
enum class TaskMetric {
  likelihood,  ///< mean log p(correct answer) in nats, minus the full cache's on the same samples
  accuracy     ///< accuracy over the full cache's accuracy on the same samples (official)
};

/// Options of NammFitness.
struct NammFitnessOptions {
  std::vector<tasks::TaskOptions> tasks;  ///< the stage's tasks; the fitness is the mean over them
  Index samples = 16;                     ///< per task and generation, shared by every member
  TaskMetric metric = TaskMetric::likelihood;
  Budget cap;                             ///< NAMM's hard cap (none: the threshold rule alone)
  std::uint64_t seed = 1;                 ///< seed of the sample stream
};

/// Seed of sample `i` of task `task` in generation `generation`: a stream of its own (neither the
/// held-out eval_seed stream nor the training sources').
inline std::uint64_t fitness_seed(std::uint64_t seed, Index generation, Index task, Index i) {
  constexpr std::uint64_t kFitnessStream = 0xF17E'55ED'0000'0001ull;
  return tasks::mix_seed(kFitnessStream ^ tasks::mix_seed(seed) ^
                         tasks::mix_seed(std::uint64_t(generation) * 1'000'003u + std::uint64_t(task) * 65'537u + std::uint64_t(i)));
}

/// Normalisation statistics of the NAMM features from full-cache reads of the first generation's
/// samples of each task (the official procedure collects them once, in the first evaluation, then
/// freezes them). Throws Error when no update happened (samples shorter than n_up).
template <class T>
namm::NormStats collect_norm_stats(const Decoder<T>& host, const tasks::Corpus& corpus, const NammFitnessOptions& o,
                                   const namm::NammConfig& config) {
  namm::StatsCollector collector;
  const auto collect = namm::NammPolicy<T>::collecting(collector, config);
  // The samples' tokens only (no candidate answers), one sequence at a time: the collector is not
  // thread-safe.
  for (std::size_t t = 0; t < o.tasks.size(); ++t)
    for (Index i = 0; i < o.samples; ++i) {
      tasks::SampleStream stream(corpus, o.tasks[t], fitness_seed(o.seed, 0, Index(t), i));
      auto state = host.make_state(&collect);
      std::vector<std::int32_t> chunk(std::size_t(std::min<Index>(o.tasks[t].length, 4096)));
      while (stream.remaining() > 0) {
        const Index n = stream.read(chunk);
        host.prefill(std::span<const std::int32_t>(chunk.data(), std::size_t(n)), state);
      }
    }
  check(collector.stats.count > 0, "eval::collect_norm_stats", "no NAMM update happened: the samples are shorter than n_up (", config.n_up,
        ")");
  return collector.stats;
}

/// One generation's samples and the full cache's scores on them; a member's fitness on the same
/// samples. Usage: start_generation(g), then operator() for every member (from any thread).
template <class T>
class NammFitness {
 public:
  /// `host` and `corpus` must outlive the fitness.
  NammFitness(const Decoder<T>& host, const tasks::Corpus& corpus, namm::NormStats stats, namm::NammConfig config, NammFitnessOptions o)
      : host_(host), corpus_(corpus), stats_(stats), config_(config), o_(std::move(o)) {
    check(!o_.tasks.empty(), "eval::NammFitness", "needs at least one task");
    check(o_.samples > 0, "eval::NammFitness", "needs at least one sample per task, got ", o_.samples);
    config_.cap = o_.cap;
    config_.validate();
  }

  /// A member's value: the fitness and what it is made of (means over the stage's tasks).
  struct Value {
    double fitness = 0;
    double accuracy = 0;       ///< answer accuracy with the evicting cache
    double answer_log_prob = 0;
    double cache_kept = 1;     ///< fraction of the read tokens the caches hold when the question is answered
  };

  /// Draws generation `g`'s samples and scores them with the full cache (the normaliser).
  void start_generation(Index g) {
    generation_ = g;
    reference_.clear();
    const DecoderReader<T> full(host_);
    for (std::size_t t = 0; t < o_.tasks.size(); ++t) reference_.push_back(score_task(full, corpus_, o_.tasks[t], options(Index(t), true)));
  }

  /// The full cache's scores on the current samples, one per task.
  const std::vector<TaskScore>& reference() const { return reference_; }
  const namm::NormStats& stats() const { return stats_; }
  const NammFitnessOptions& options() const { return o_; }

  /// Fitness of the NAMM with scorer weights `theta` (BamScorer's flat layout) on the current
  /// samples. Thread-safe; runs single-threaded inside (the population runs in parallel).
  Value operator()(std::span<const T> theta) const {
    check(!reference_.empty(), "eval::NammFitness", "call start_generation before evaluating a member");
    const namm::NammPolicy<T> policy(namm::BamScorer<T>(theta), stats_, config_);
    const DecoderReader<T> reader(host_, &policy);
    Value v;
    v.cache_kept = 0;
    for (std::size_t t = 0; t < o_.tasks.size(); ++t) {
      const TaskScore s = score_task(reader, corpus_, o_.tasks[t], options(Index(t), false));
      const TaskScore& full = reference_[t];
      const double n = double(o_.tasks.size());
      // A full cache that answers none of the samples is counted as answering one (no division by 0).
      v.fitness += (o_.metric == TaskMetric::likelihood ? s.answer_log_prob - full.answer_log_prob
                                                        : s.accuracy / std::max(full.accuracy, 1.0 / double(o_.samples))) / n;
      v.accuracy += s.accuracy / n;
      v.answer_log_prob += s.answer_log_prob / n;
      v.cache_kept += s.mean_cache_kept / n;
    }
    return v;
  }

 private:
  TaskEvalOptions options(Index task, bool parallel) const {
    const std::uint64_t seed = o_.seed;
    const Index g = generation_;
    return {.samples = o_.samples, .seed_of = [seed, g, task](Index i) { return fitness_seed(seed, g, task, i); }, .parallel = parallel};
  }

  const Decoder<T>& host_;
  const tasks::Corpus& corpus_;
  namm::NormStats stats_;
  namm::NammConfig config_;
  NammFitnessOptions o_;
  Index generation_ = 0;
  std::vector<TaskScore> reference_;
};

}  // namespace eval
ENGRAM_NAMESPACE_END
