// engram-rmt-train's curriculum trainer data-parallel under mpirun: R ranks follow one process
// drawing the same micro-batches, through a stage change (the next stage starts from the best
// weights, chosen by the held-out accuracy rank 0 measures and broadcasts), with rank 0 alone
// writing the curves and checkpoints.
#include <filesystem>

#include "engram/eval/memory_tasks.hpp"
#include "engram/eval/rmt_reader.hpp"
#include "engram/nn/init.hpp"
#include "engram/rmt/curriculum.hpp"
#include "engram/rmt/init.hpp"
#include "mpi/mpi_test_util.hpp"

using namespace engram;
using test::world;

namespace {

using Rmt = rmt::RecurrentWrapper<float>;

Rmt tiny_rmt() {
  auto bb = std::make_shared<Decoder<float>>(Decoder<float>::create(ModelConfig::gpt2(tasks::ByteTokenizer::vocab_size, 16, 1, 2, 64 + 4)));
  init_for_training(*bb, 1);
  return Rmt(rmt::MemoryCell<float>(bb, rmt::Config::decoder(2, 64), rmt::hf_initial_memory(*bb, 2, 2)));
}

rmt::CurriculumOptions options(const std::filesystem::path& out, train::Collective* c) {
  rmt::CurriculumOptions o;
  o.stages = {{1, 3}, {2, 3}};
  o.min_stage_steps = 1;
  o.advance_accuracy = 2;  // the budgets end the stages
  o.batch = 2 * world().size(), o.micro_batch = 2;  // one micro-batch of 2 per rank
  o.lr = 1e-2, o.min_lr = 1e-3, o.warmup = 1;
  o.log_every = 1, o.eval_every = 2, o.checkpoint_every = 2;
  o.out_dir = out;
  o.collective = c;
  return o;
}

rmt::CurriculumTrainer<Rmt>::HeldOut held_out(const tasks::Corpus& corpus) {
  return [&corpus](const Rmt& m, Index segments) {
    tasks::TaskOptions t{tasks::Task::fact_memorization, segments * m.segment_size() - tasks::max_answer_bytes(), m.segment_size()};
    eval::TaskEvalOptions e;
    e.samples = 4, e.first_sample = 1'000'000, e.parallel = false;
    return eval::score_task(eval::MemoryReader<Rmt>(m), corpus, t, e).accuracy;
  };
}

}  // namespace

TEST_CASE("mpi: RMT curriculum training on R ranks follows one process", "[mpi][rmt]") {
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  test::SharedDir shared;
  test::TempDir local;
  Rmt dp = tiny_rmt(), single = tiny_rmt();
  rmt::CurriculumTrainer<Rmt> t_dp(dp, corpus, options(shared.path() / "dp", &world()), held_out(corpus));
  t_dp.run();
  rmt::CurriculumTrainer<Rmt> t_single(single, corpus, options(local.path(), nullptr), held_out(corpus));
  t_single.run();
  bool same_everywhere = true;
  try {
    train::check_same(world(), train::parameter_fingerprint(t_dp.gradients()), "the RMT weights");
  } catch (const Error&) {
    same_everywhere = false;
  }
  std::vector<double> loss_dp, loss_single;
  std::vector<Index> stage_dp, stage_single;
  for (const auto& p : t_dp.history()) loss_dp.push_back(p.loss), stage_dp.push_back(p.stage);
  for (const auto& p : t_single.history()) loss_single.push_back(p.loss), stage_single.push_back(p.stage);
  const bool wrote = std::filesystem::exists(shared.path() / "dp" / "curriculum.csv") &&
                     std::filesystem::exists(shared.path() / "dp" / "final" / "config.json");
  world().barrier();
  REQUIRE(loss_dp.size() == 6);
  // Float sums of the same micro-batch gradients in another order (train tests: 4e-9 measured).
  REQUIRE(test::max_relative_difference(loss_dp, loss_single) <= 1e-6);
  REQUIRE(stage_dp == stage_single);
  REQUIRE(same_everywhere);
  REQUIRE(wrote);  // by rank 0, into the directory every rank sees
}
