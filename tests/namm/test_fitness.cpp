// NAMM's task fitness (eval/namm_fitness.hpp) on the committed trained host (tests/fixtures/namm_host,
// a byte-level Llama trained by engram-train on fact_detection): it can show failure (a NAMM that
// evicts everything scores far below the full cache, one that evicts nothing scores as the full
// cache), it respects a cap, its samples are fresh per generation and fixed within one, and it is
// deterministic under parallel evaluation. Also: the task harness ends the prompt before the answer
// (prompt compressors compress there), and the committed evolved NAMM keeps the host's answers.
#include <set>

#include "engram/eval/namm_fitness.hpp"
#include "engram/io/hf.hpp"
#include "engram/policies/factory.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

const Decoder<float>& trained_host() {
  static const Decoder<float> m = hf::load_decoder<float>(test::fixture("namm_host"));
  return m;
}

const tasks::Corpus& fitness_background() {
  static const tasks::Corpus c = tasks::Corpus::fortunes();
  return c;
}

eval::NammFitnessOptions detection(Index samples, Budget cap = Budget::none()) {
  eval::NammFitnessOptions o;
  tasks::TaskOptions t;
  t.task = tasks::Task::fact_detection, t.length = 256;
  o.tasks = {t};
  o.samples = samples;
  o.cap = cap;
  return o;
}

namm::NammConfig every_64() {
  namm::NammConfig c;
  c.n_up = 64;
  return c;
}

// Scorer weights whose every score is `bias` (all weights 0, the score bias b_s = bias): 0 keeps
// every token (evictable means score < threshold 0), -1 evicts all but the protected newest.
std::vector<float> constant_scores(float bias) {
  std::vector<float> theta(std::size_t(namm::BamScorer<float>::kParams), 0.0f);
  theta.back() = bias;
  return theta;
}

}  // namespace

TEST_CASE("NAMM task fitness shows failure: evicting everything scores far below the full cache", "[namm][fitness]") {
  const auto o = detection(12);
  const namm::NormStats stats = eval::collect_norm_stats(trained_host(), fitness_background(), o, every_64());
  CHECK(stats.count > 0);
  eval::NammFitness<float> fitness(trained_host(), fitness_background(), stats, every_64(), o);
  fitness.start_generation(0);
  // The host is trained: with the full cache it answers most of the samples (chance is 1 in 6).
  REQUIRE(fitness.reference().size() == 1);
  CHECK(fitness.reference()[0].accuracy >= 0.5);

  const auto keep = fitness(constant_scores(0.0f)), evict = fitness(constant_scores(-1.0f));
  CHECK(keep.cache_kept == Approx(1.0));
  CHECK(std::abs(keep.fitness) < 1e-3);  // the same answers as the full cache
  CHECK(keep.accuracy == Approx(fitness.reference()[0].accuracy));
  CHECK(evict.cache_kept < 0.05);
  CHECK(evict.fitness < -0.5);  // nats of the correct answer's log-likelihood lost
  CHECK(evict.accuracy < fitness.reference()[0].accuracy);
}

TEST_CASE("NAMM task fitness: a cap bounds the cache kept when the question is answered", "[namm][fitness]") {
  const auto o = detection(4, Budget::of_ratio(0.25));
  const namm::NormStats stats = eval::collect_norm_stats(trained_host(), fitness_background(), o, every_64());
  eval::NammFitness<float> fitness(trained_host(), fitness_background(), stats, every_64(), o);
  fitness.start_generation(0);
  const auto capped = fitness(constant_scores(0.0f));  // would keep everything without the cap
  // 256-token samples, updates every 64: the last update runs after the question, at the cap.
  CHECK(capped.cache_kept <= 0.25 + 1e-9);
  CHECK(capped.cache_kept > 0.2);
}

TEST_CASE("NAMM task fitness: fresh samples per generation, the same within one, deterministic in parallel", "[namm][fitness]") {
  const auto o = detection(4);
  const namm::NormStats stats = eval::collect_norm_stats(trained_host(), fitness_background(), o, every_64());
  eval::NammFitness<float> fitness(trained_host(), fitness_background(), stats, every_64(), o);
  std::vector<float> theta(std::size_t(namm::BamScorer<float>::kParams));
  for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = 0.05f * float(std::sin(double(i)));
  fitness.start_generation(3);
  const double ref3 = fitness.reference()[0].answer_log_prob, f3 = fitness(theta).fitness;
  fitness.start_generation(4);
  CHECK(fitness.reference()[0].answer_log_prob != ref3);  // other samples
  fitness.start_generation(3);
  CHECK(fitness.reference()[0].answer_log_prob == ref3);
  std::vector<double> f(4);
  parallel_for(0, 4, [&](Index i) { f[std::size_t(i)] = fitness(theta).fitness; });
  for (double v : f) CHECK(v == f3);
}

TEST_CASE("NAMM fitness samples never meet the held-out samples", "[namm][fitness]") {
  std::set<std::uint64_t> held;
  for (Index i = 0; i < 4096; ++i) held.insert(eval::eval_seed(i));
  for (Index g = 0; g < 64; ++g)
    for (Index i = 0; i < 64; ++i) CHECK(held.count(eval::fitness_seed(1, g, 0, i)) == 0);
  CHECK(eval::fitness_seed(1, 0, 0, 0) != eval::fitness_seed(2, 0, 0, 0));  // the seed matters
  CHECK(eval::fitness_seed(1, 0, 0, 1) != eval::fitness_seed(1, 0, 1, 0));  // so does the task
}

TEST_CASE("NAMM task fitness: bad use is an Error", "[namm][fitness]") {
  const auto o = detection(2);
  const namm::NormStats stats = eval::collect_norm_stats(trained_host(), fitness_background(), o, every_64());
  auto none = o;
  none.tasks.clear();
  CHECK_THROWS_WITH(eval::NammFitness<float>(trained_host(), fitness_background(), stats, every_64(), none),
                    Catch::Contains("needs at least one task"));
  auto zero = o;
  zero.samples = 0;
  CHECK_THROWS_WITH(eval::NammFitness<float>(trained_host(), fitness_background(), stats, every_64(), zero),
                    Catch::Contains("at least one sample"));
  const eval::NammFitness<float> fitness(trained_host(), fitness_background(), stats, every_64(), o);
  CHECK_THROWS_WITH(fitness(constant_scores(0.0f)), Catch::Contains("start_generation"));
  auto short_samples = o;
  short_samples.tasks[0].length = 60;  // shorter than n_up (64): no update, no statistics
  CHECK_THROWS_WITH(eval::collect_norm_stats(trained_host(), fitness_background(), short_samples, every_64()),
                    Catch::Contains("no NAMM update"));
}

TEST_CASE("score_task ends the prompt after the question: SnapKV compresses before the answer", "[namm][fitness]") {
  tasks::TaskOptions t;
  t.task = tasks::Task::fact_detection, t.length = 256;
  const auto snapkv = policies::make_policy<float>("snapkv", Budget::of_ratio(0.25));
  const eval::DecoderReader<float> reader(trained_host(), snapkv.get());
  const eval::TaskScore s = eval::score_task(reader, fitness_background(), t, {.samples = 8});
  CHECK(s.mean_cache_kept <= 0.25 + 1e-9);  // without end_prompt SnapKV would never compress: 1.0
  CHECK(s.mean_cache_kept > 0.2);
}

TEST_CASE("the committed evolved NAMM keeps the trained host's answers with a quarter of the cache", "[namm][fitness]") {
  // tests/fixtures/namm_host/namm.safetensors: engram-namm-evolve on this host (README, "NAMM on a
  // trained host"); held-out samples of its task, at a length it was evolved at.
  const auto w = namm::load_namm<float>(test::fixture("namm_host/namm.safetensors").string());
  const auto policy = w.make_policy(Budget::of_ratio(0.25));
  tasks::TaskOptions t;
  t.task = tasks::Task::fact_detection, t.length = 1024;
  const eval::DecoderReader<float> reader(trained_host(), policy.get());
  const eval::TaskScore s = eval::score_task(reader, fitness_background(), t, {.samples = 24});
  CHECK(s.mean_cache_kept <= 0.25 + 1e-9);
  CHECK(s.accuracy >= 0.9);  // 99.0% [96.4, 99.7] on 200 samples; chance is 1 in 6
}
