// The mpi component under `mpirun -np 2` (any number of ranks works, one included): data-parallel
// training against a single process with the same sequences, resume across different numbers of
// ranks, distributed CMA-ES against a single-process run, and failures that end every rank with the
// same error. Every rank runs every test case; each does its collectives before its REQUIREs, so a
// failed check on one rank cannot leave the other waiting.
#include <cmath>
#include <filesystem>
#include <string>

#include "engram/namm/distributed.hpp"
#include "engram/nn/init.hpp"
#include "engram/train/trainer.hpp"
#include "mpi/mpi_test_util.hpp"

using namespace engram;
using test::max_relative_difference;
using test::SharedDir;
using test::world;

namespace {

const train::TextCorpus& corpus() {
  static const auto c = train::TextCorpus::from_text(
      std::string(3000, 'a') + "the quick brown fox jumps over the lazy dog. " + std::string(2000, 'b') + "pack my box with five dozen liquor jugs. ",
      "test text", 0.3);
  return c;
}

template <class T = float>
Decoder<T> tiny_model() {
  ModelConfig c = ModelConfig::llama(261, 16, 2, 4, 2, 24);
  c.max_positions = 64;
  Decoder<T> m = Decoder<T>::create(c);
  init_random(m, 61, 0.1);
  return m;
}

// b = 2 sequences per rank: the whole batch is 2 R sequences.
train::TrainerOptions options(Index steps, Index micro_batch, train::Collective* c) {
  train::TrainerOptions o;
  o.steps = steps;
  o.batch = 2 * world().size();
  o.micro_batch = micro_batch;
  o.schedule = {.peak = 3e-3, .min_lr = 3e-4, .warmup = 2, .total = steps};
  o.log_every = 1;
  o.eval_every = 3;
  o.eval_batches = 1;
  o.checkpoint_every = 3;
  o.collective = c;
  return o;
}

struct Curve {
  std::vector<double> loss, held_out;
};
void record(Curve& curve, const train::Progress& p) {
  curve.loss.push_back(p.loss);
  if (std::isfinite(p.held_out)) curve.held_out.push_back(p.held_out);
}

// max |a - b| over every parameter / max |b|.
template <class T>
double weight_difference(Decoder<T>& a, Decoder<T>& b) {
  std::vector<Tensor<T>*> pb;
  b.visit_parameters([&](const std::string&, Tensor<T>& t) { pb.push_back(&t); });
  double diff = 0, scale = 0;
  std::size_t i = 0;
  a.visit_parameters([&](const std::string&, Tensor<T>& t) {
    const Tensor<T>& u = *pb[i++];
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c) diff = std::max(diff, double(std::abs(t.row(r)[c] - u.row(r)[c]))), scale = std::max(scale, double(std::abs(u.row(r)[c])));
  });
  return diff / scale;
}

// Tolerances. Reduction order is the only difference between R ranks with micro-batches of b and
// one process accumulating the same R micro-batches: there the kernels add micro-batch j's
// gradient into the running sum (GEMM with beta = 1 rounds partial sums into it), here each rank's
// gradient is formed alone and the R of them added by MPI. Same terms, other rounding: gradients an
// ulp or two apart (measured: 1e-8 absolute on gradients of 0.05 in float).
// - Losses (float): measured 4e-9 relative after 6 steps; 1e-6 leaves 250x margin, while the same
//   run on other sequences differs by 3e-2.
// - Weights: AdamW divides each gradient by its own running RMS, so a coordinate whose gradient is
//   a near-cancellation (|g| far below its terms, at the scale of eps = 1e-8) carries the rounding
//   difference into its update at full relative size: in float, measured 1.7e-4 on one qkv weight
//   (every other parameter within 6e-8). No tolerance below the learning rate holds for that in
//   float, so the weights are compared in double, where rounding sits 8 orders below eps: measured
//   1.2e-13 with 2 ranks, 1.8e-13 with 3; required 1e-10. Double losses: measured <= 2e-16,
//   required 1e-12.
constexpr double kLossTolerance = 1e-6;
constexpr double kDoubleLossTolerance = 1e-12;
constexpr double kDoubleWeightTolerance = 1e-10;

template <class T>
struct Run {
  Decoder<T> model = tiny_model<T>();
  Curve curve;
};
template <class T>
Run<T> train_run(const train::BatchSource& source, Index micro_batch, train::Collective* c) {
  Run<T> r;
  train::Trainer<T> t(r.model, source, options(6, micro_batch, c));
  t.run([&](const train::Progress& p) { record(r.curve, p); });
  return r;
}

}  // namespace

TEST_CASE("mpi: Communicator sums, broadcasts and agrees", "[mpi][communicator]") {
  mpi::Communicator& c = world();
  const int R = c.size(), r = c.rank();
  std::vector<float> f = {float(r), 1.5f, float(r * r)};
  std::vector<double> d = {double(r) + 0.25};
  c.sum(f);
  c.sum(d);
  std::uint64_t token = r == 0 ? 0xC0FFEEull : 0;
  c.broadcast(std::as_writable_bytes(std::span(&token, 1)), 0);
  bool agreed = true;
  try {
    c.agree("");
  } catch (const Error&) {
    agreed = false;
  }
  const double ranks_sum = double(R) * double(R - 1) / 2;
  double squares = 0;
  for (int k = 0; k < R; ++k) squares += double(k) * double(k);
  REQUIRE(f[0] == float(ranks_sum));
  REQUIRE(f[1] == 1.5f * float(R));
  REQUIRE(f[2] == float(squares));
  REQUIRE(d[0] == ranks_sum + 0.25 * R);
  REQUIRE(token == 0xC0FFEEull);
  REQUIRE(agreed);
}

TEST_CASE("mpi: data-parallel training with R ranks of batch b follows one process with batch R b", "[mpi][data_parallel]") {
  const train::WindowSource source(corpus(), 24, 99), other(corpus(), 24, 100);
  // Data-parallel (micro-batches of batch / R = b, one per rank); every rank also runs the
  // single-process reference itself (micro-batches of b, accumulated), and the same run on other
  // sequences, which the tolerance must tell apart.
  auto dp = train_run<float>(source, 0, &world());
  auto single = train_run<float>(source, 2, nullptr);
  auto control = train_run<float>(other, 2, nullptr);
  auto dp64 = train_run<double>(source, 0, &world());
  auto single64 = train_run<double>(source, 2, nullptr);
  // Every rank holds rank 0's weights, bit for bit.
  bool same_everywhere = true;
  try {
    Gradients<float> g(dp.model);
    train::check_same(world(), train::parameter_fingerprint(g), "the weights");
  } catch (const Error&) {
    same_everywhere = false;
  }
  CAPTURE(world().rank(), world().size());
  REQUIRE(dp.curve.loss.size() == 6);
  REQUIRE(dp.curve.held_out.size() == 2);
  REQUIRE(max_relative_difference(dp.curve.loss, single.curve.loss) <= kLossTolerance);
  REQUIRE(max_relative_difference(dp.curve.held_out, single.curve.held_out) <= kLossTolerance);
  REQUIRE(max_relative_difference(control.curve.loss, single.curve.loss) > 1e-3);
  REQUIRE(max_relative_difference(dp64.curve.loss, single64.curve.loss) <= kDoubleLossTolerance);
  REQUIRE(max_relative_difference(dp64.curve.held_out, single64.curve.held_out) <= kDoubleLossTolerance);
  REQUIRE(weight_difference(dp64.model, single64.model) <= kDoubleWeightTolerance);
  REQUIRE(weight_difference(dp.model, control.model) > 1e-3);  // the weights do move apart on other data
  REQUIRE(same_everywhere);
}

TEST_CASE("mpi: a checkpoint resumes on a different number of ranks", "[mpi][data_parallel][resume]") {
  const train::WindowSource source(corpus(), 24, 99);
  const bool root = world().rank() == 0;
  Curve straight;
  auto m_straight = tiny_model();
  {
    train::Trainer<float> t(m_straight, source, options(6, 2, nullptr));
    t.run([&](const train::Progress& p) { record(straight, p); });
  }
  // R ranks to step 3, then one process (rank 0) from the step-3 checkpoint to step 6.
  SharedDir a;
  Curve r_then_1;
  auto m1 = tiny_model();
  {
    auto o = options(6, 0, &world());
    o.out_dir = a.path();
    train::Trainer<float> t(m1, source, o);
    t.run([&](const train::Progress& p) { record(r_then_1, p); }, /*until=*/3);
  }
  world().barrier();
  if (root) {
    auto m = tiny_model();
    init_random(m, 999, 0.1);  // the checkpoint must overwrite these
    auto o = options(6, 2, nullptr);
    o.out_dir = a.path(), o.resume = true;
    train::Trainer<float> t(m, source, o);
    t.run([&](const train::Progress& p) { record(r_then_1, p); });
  }
  world().barrier();
  // One process (rank 0) to step 3, then R ranks from its checkpoint to step 6.
  SharedDir b;
  Curve one_then_r;
  if (root) {
    auto m = tiny_model();
    auto o = options(6, 2, nullptr);
    o.out_dir = b.path();
    train::Trainer<float> t(m, source, o);
    t.run([&](const train::Progress& p) { record(one_then_r, p); }, /*until=*/3);
  }
  world().barrier();
  auto m2 = tiny_model();
  init_random(m2, 998, 0.1);
  {
    auto o = options(6, 0, &world());
    o.out_dir = b.path(), o.resume = true;
    train::Trainer<float> t(m2, source, o);
    t.run([&](const train::Progress& p) { record(one_then_r, p); });
  }
  if (root) {
    REQUIRE(max_relative_difference(r_then_1.loss, straight.loss) <= kLossTolerance);
    REQUIRE(max_relative_difference(one_then_r.loss, straight.loss) <= kLossTolerance);
  } else {  // the other ranks saw steps 1-3 of the first run and 4-6 of the second
    REQUIRE(r_then_1.loss.size() == 3);
    REQUIRE(one_then_r.loss.size() == 3);
    REQUIRE(max_relative_difference(one_then_r.loss, std::vector<double>(straight.loss.begin() + 3, straight.loss.end())) <= kLossTolerance);
  }
}

namespace {

// A deterministic fitness with structure in every coordinate (maximised near x_i = 0.3 i).
double fitness(const Eigen::VectorXd& x) {
  double f = 0;
  for (Index i = 0; i < x.size(); ++i) f -= (x(i) - 0.3 * double(i)) * (x(i) - 0.3 * double(i)) + 0.1 * std::sin(3 * x(i));
  return f;
}

CmaesOptions cmaes_options() {
  CmaesOptions o;
  o.dim = 7;
  o.lambda = 9;  // not a multiple of 2: the ranks evaluate unequal shares
  o.sigma0 = 0.5;
  o.seed = 2024;
  return o;
}

}  // namespace

TEST_CASE("mpi: distributed CMA-ES draws, scores and moves exactly as one process", "[mpi][cmaes]") {
  // Single process: ask, evaluate every candidate here, tell.
  std::vector<Eigen::MatrixXd> xs_single;
  std::vector<std::vector<double>> fs_single;
  Cmaes single(cmaes_options());
  for (int g = 0; g < 5; ++g) {
    xs_single.push_back(single.ask());
    std::vector<double> f;
    for (Index i = 0; i < xs_single.back().cols(); ++i) f.push_back(fitness(xs_single.back().col(i)));
    single.tell(f);
    fs_single.push_back(f);
  }
  // Across the ranks: 3 generations, rank 0's checkpoint, every rank resumes from it, 2 more.
  SharedDir dir;
  const std::string ckpt = (dir.path() / "cmaes.safetensors").string();
  std::vector<Eigen::MatrixXd> xs;
  std::vector<std::vector<double>> fs;
  std::vector<Index> evaluated_here;
  auto f = [&](const Eigen::VectorXd& x, double* out) { out[0] = fitness(x); };
  {
    Cmaes es(cmaes_options());
    for (int g = 0; g < 3; ++g) {
      const namm::Generation gen = namm::generation(es, &world(), 1, f);
      xs.push_back(gen.x);
      fs.push_back(gen.values);
    }
    if (world().rank() == 0) es.save(ckpt);
  }
  world().barrier();
  Cmaes resumed = Cmaes::load(ckpt);
  for (int g = 0; g < 2; ++g) {
    const namm::Generation gen = namm::generation(resumed, &world(), 1, f);
    xs.push_back(gen.x);
    fs.push_back(gen.values);
  }
  // The split: rank r evaluated candidates r, r + R, ... only.
  std::vector<double> count(std::size_t(world().size()), 0.0);
  train::evaluate_across_ranks(&world(), 9, 1, [&](Index i, double* out) {
    out[0] = 1;
    count[std::size_t(world().rank())] += 1;
    evaluated_here.push_back(i);
  });
  REQUIRE(xs.size() == 5);
  for (int g = 0; g < 5; ++g) {
    REQUIRE(xs[std::size_t(g)] == xs_single[std::size_t(g)]);  // exact: same draws
    REQUIRE(fs[std::size_t(g)] == fs_single[std::size_t(g)]);  // exact: gathered as computed
  }
  REQUIRE(resumed.mean() == single.mean());
  REQUIRE(resumed.sigma() == single.sigma());
  for (Index i : evaluated_here) REQUIRE(i % world().size() == world().rank());
  REQUIRE(Index(evaluated_here.size()) == (9 - world().rank() + world().size() - 1) / world().size());
}

namespace {

// Windows of `inner`, except that the last rank's micro-batch of step `fail_step` fails: by
// throwing (`throw_error`) or with a token outside the vocabulary (an Error inside lm_step).
class FailingSource final : public train::BatchSource {
 public:
  FailingSource(const train::BatchSource& inner, Index fail_step, bool throw_error) : inner_(inner), step_(fail_step), throw_(throw_error) {}
  train::Batch train_batch(Index step, Index micro, Index n) const override {
    train::Batch b = inner_.train_batch(step, micro, n);
    if (step == step_ && micro == world().size() - 1) {
      if (throw_) fail("FailingSource", "injected failure at step ", step);
      b.tokens[0] = 100000;
    }
    return b;
  }
  train::Batch held_out_batch(Index i, Index n) const override { return inner_.held_out_batch(i, n); }
  Index seq_len() const override { return inner_.seq_len(); }
  std::string describe() const override { return "failing " + inner_.describe(); }

 private:
  const train::BatchSource& inner_;
  Index step_;
  bool throw_;
};

}  // namespace

TEST_CASE("mpi: a rank that fails ends the step with the same clear error on every rank", "[mpi][failure]") {
  const train::WindowSource windows(corpus(), 24, 99);
  const int last = world().size() - 1;
  const std::string who = "rank " + std::to_string(last) + " of " + std::to_string(world().size()) + " failed: ";
  auto train_with = [&](const train::BatchSource& source) {
    return test::error_of([&] {
      auto m = tiny_model();
      train::Trainer<float> t(m, source, options(6, 0, &world()));
      t.run();
    });
  };
  const std::string thrown = train_with(FailingSource(windows, 2, true));
  const std::string bad_token = train_with(FailingSource(windows, 3, false));
  const std::string fitness_failed = test::error_of([&] {
    train::evaluate_across_ranks(&world(), 5, 1, [&](Index i, double* out) {
      check(i != last, "fitness", "injected failure of candidate ", i);  // the last rank's first candidate
      out[0] = double(i);
    });
  });
  // Replicas that diverge (a weight changed on the last rank) are caught at the next checkpoint.
  std::string diverged;
  if (world().size() > 1) {
    SharedDir dir;
    diverged = test::error_of([&] {
      auto m = tiny_model();
      auto o = options(6, 0, &world());
      o.out_dir = dir.path();
      train::Trainer<float> t(m, windows, o);
      t.step();
      if (world().rank() == last) m.embed.weight.row(0)[0] += 1.0f;
      t.checkpoint();
    });
  }
  CAPTURE(thrown, bad_token, fitness_failed, diverged);
  REQUIRE_THAT(thrown, Catch::StartsWith(who) && Catch::Contains("injected failure at step 2"));
  REQUIRE_THAT(bad_token, Catch::StartsWith(who) && Catch::Contains("token 100000"));
  REQUIRE_THAT(fitness_failed, Catch::StartsWith(who) && Catch::Contains("injected failure of candidate"));
  if (world().size() > 1) REQUIRE_THAT(diverged, Catch::Contains("rank " + std::to_string(last)) && Catch::Contains("differs from rank 0's"));
}
