// The committed trained checkpoints (tests/fixtures/rmt_trained/<task>, engram-rmt-train; commands
// in the README): each answers its task on a fixed set of held-out samples (the eval stream, which
// no training step or model selection saw) far above chance, at 8 and 32 segments, while the same
// model without its memory (reading only the last segment) stays near chance.
#include <filesystem>

#include "engram/eval/memory_tasks.hpp"
#include "engram/eval/rmt_reader.hpp"
#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/loader.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

template <class W>
double accuracy(const W& model, tasks::Task task, Index length, Index samples, bool last_segment_only = false) {
  tasks::TaskOptions t;
  t.task = task;
  t.length = length;
  t.segment_size = model.segment_size();
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  eval::TaskEvalOptions o;
  o.samples = samples;
  if (!last_segment_only) return eval::score_task(eval::MemoryReader<W>(model), corpus, t, o).accuracy;
  // The same model reading only the tokens of the last segment (the tail the question ends in).
  Index correct = 0;
  for (Index i = 0; i < samples; ++i) {
    const tasks::Sample s = tasks::make_sample(corpus, t, eval::eval_seed(i));
    const Index tail = (length - 1) % model.segment_size() + 1;
    auto st = model.make_state();
    model.push(std::span<const std::int32_t>(s.tokens).last(std::size_t(tail)), st);
    correct += eval::most_likely_answer(model, st) == s.info.answer;
  }
  return double(correct) / double(samples);
}

template <class F>
void for_each_fixture(F&& f) {
  const auto root = test::fixture("rmt_trained");
  REQUIRE(std::filesystem::is_directory(root));
  int found = 0;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    const tasks::Task task = name.starts_with("fact_memorization") ? tasks::Task::fact_memorization
                             : name.starts_with("fact_detection")  ? tasks::Task::fact_detection
                                                                   : tasks::Task::reasoning;
    const json::Value cfg = read_json_file(e.path() / "config.json");
    INFO(name);
    if (cfg.find("armt")) f(name, task, rmt::load_armt<float>(e.path()));
    else f(name, task, rmt::load<float>(e.path()));
    ++found;
  }
  CHECK(found >= 1);
}

}  // namespace

TEST_CASE("trained RMT/ARMT checkpoints answer their task on held-out samples", "[rmt][trained]") {
  for_each_fixture([](const std::string& name, tasks::Task task, const auto& model) {
    const Index s = model.segment_size();
    // 8 segments (the longest trained) and 32 (4x longer than any training sample).
    const double at8 = accuracy(model, task, 8 * s, 24), at32 = accuracy(model, task, 32 * s, 12);
    const double alone = accuracy(model, task, 8 * s, 24, /*last_segment_only=*/true);
    INFO(name << ": accuracy " << at8 << " at 8 segments, " << at32 << " at 32, " << alone << " without memory");
    const double goal = task == tasks::Task::reasoning ? 0.75 : 0.9;
    CHECK(at8 >= goal);
    CHECK(at32 >= goal);
    CHECK(alone <= 0.5);  // chance is 1/6: the memory is what answers
  });
}
