// A data-parallel training job whose last rank fails, run by ctest under mpirun to check that the
// whole job ends, with a clear message, instead of hanging:
//   failing_rank step   the last rank throws inside a training step: every rank reports
//                       "rank R of N failed: ..." and exits with status 1 (failure agreement);
//   failing_rank alone  the last rank throws before training while the others wait for it in the
//                       first step's collective: it reports the error, gives them 2 s, then
//                       MPI_Abort ends the job (mpi::Session::finish).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "engram/mpi/session.hpp"
#include "engram/nn/init.hpp"
#include "engram/train/trainer.hpp"

using namespace engram;

namespace {

class FailingSource final : public train::BatchSource {
 public:
  FailingSource(const train::BatchSource& inner, int fail_micro) : inner_(inner), fail_micro_(fail_micro) {}
  train::Batch train_batch(Index step, Index micro, Index n) const override {
    check(!(step == 2 && micro == fail_micro_), "FailingSource", "injected failure in step ", step, ", micro-batch ", micro);
    return inner_.train_batch(step, micro, n);
  }
  train::Batch held_out_batch(Index i, Index n) const override { return inner_.held_out_batch(i, n); }
  Index seq_len() const override { return inner_.seq_len(); }
  std::string describe() const override { return inner_.describe(); }

 private:
  const train::BatchSource& inner_;
  int fail_micro_;
};

}  // namespace

int main(int argc, char** argv) {
  mpi::Session session(argc, argv, /*force=*/true);
  const bool alone = argc > 1 && std::strcmp(argv[1], "alone") == 0;
  const int last = session.size() - 1;
  int status = 0;
  try {
    if (alone && session.rank() == last) fail("failing_rank", "injected failure before training on rank ", last);
    const auto corpus = train::TextCorpus::from_text(std::string(2000, 'a') + "the quick brown fox jumps over the lazy dog. " + std::string(2000, 'b'),
                                                     "test text", 0.3);
    const train::WindowSource windows(corpus, 16, 1);
    const FailingSource source(windows, last);
    ModelConfig c = ModelConfig::llama(261, 16, 1, 2, 2, 24);
    c.max_positions = 32;
    Decoder<float> m = Decoder<float>::create(c);
    init_random(m, 1, 0.1);
    train::TrainerOptions o;
    o.steps = 4, o.batch = 2 * session.size(), o.eval_every = 0, o.collective = session.world();
    o.schedule = {.peak = 1e-3, .min_lr = 1e-4, .warmup = 1, .total = 4};
    train::Trainer<float>(m, source, o).run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "failing_rank: error: %s\n", e.what());
    status = 1;
  }
  return session.finish(status, std::chrono::seconds(2));
}
