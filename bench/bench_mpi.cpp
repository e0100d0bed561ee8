// bench_mpi: data-parallel training from 1 to R ranks on one machine, one thread per rank
// (`mpirun -np 2 build/release/bench/bench_mpi`): tokens/s of one rank alone, of R ranks training
// independently (the machine's ceiling: they share memory bandwidth and caches) and of R ranks
// data-parallel, all measured in the same run and interleaved; the gradient all-reduce's share of
// a data-parallel step; the all-reduce alone by bucket size; whether MPI moves a non-blocking
// all-reduce forward while the rank computes (the precondition for overlapping it with the
// backward pass); and a paper estimate of the efficiency at 8 and 64 nodes for the RMT and TTT
// training runs.
//
// Not a Google Benchmark program: its adaptive iteration counts differ between ranks, and every
// data-parallel step is a collective, so the ranks would block. Each figure is the median over
// --reps interleaved repetitions of --steps steps; the ratios are what to read on a shared machine.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "engram/core/gemm.hpp"
#include "engram/mpi/mpi.hpp"
#include "engram/nn/init.hpp"
#include "engram/train/trainer.hpp"

using namespace engram;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? NAN : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// A rank that sits out a measurement: waits for the others without spinning on its core.
void idle_barrier(MPI_Comm comm) {
  MPI_Request r;
  MPI_Ibarrier(comm, &r);
  for (int done = 0; !done;) {
    MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

double max_over_ranks(double x, MPI_Comm comm) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, comm);
  return m;
}
double sum_over_ranks(double x, MPI_Comm comm) {
  double s = 0;
  MPI_Allreduce(&x, &s, 1, MPI_DOUBLE, MPI_SUM, comm);
  return s;
}

// The Communicator, timing what a data-parallel step spends in it: the float sums are the
// gradient buckets (the trainer's only float collective), the rest is control (labelled-position
// count, loss sums, failure agreements).
class TimedCollective final : public train::Collective {
 public:
  explicit TimedCollective(mpi::Communicator& c) : c_(c) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  void sum(std::span<float> v) override { timed(gradient_s, [&] { c_.sum(v); }); }
  void sum(std::span<double> v) override { timed(control_s, [&] { c_.sum(v); }); }
  void broadcast(std::span<std::byte> b, int root) override { timed(control_s, [&] { c_.broadcast(b, root); }); }
  void agree(const std::string& e) override { timed(control_s, [&] { c_.agree(e); }); }
  double gradient_s = 0, control_s = 0;

 private:
  template <class F>
  void timed(double& acc, F&& f) {
    const auto t0 = Clock::now();
    f();
    acc += seconds_since(t0);
  }
  mpi::Communicator& c_;
};

struct Args {
  Index d_model = 256, layers = 4, heads = 4, context = 256, batch = 4, steps = 3, reps = 5;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    auto value = [&](const char* flag, Index& x) {
      if (std::strcmp(argv[i], flag) != 0 || i + 1 >= argc) return false;
      x = std::atoll(argv[++i]);
      return true;
    };
    if (std::strcmp(argv[i], "--quick") == 0) {
      a.d_model = 128, a.layers = 2, a.context = 128, a.reps = 3;
      continue;
    }
    if (!(value("--d-model", a.d_model) || value("--layers", a.layers) || value("--heads", a.heads) || value("--context", a.context) ||
          value("--batch", a.batch) || value("--steps", a.steps) || value("--reps", a.reps))) {
      std::fprintf(stderr,
                   "usage: mpirun -np R bench_mpi [--quick] [--d-model 256] [--layers 4] [--heads 4] [--context 256] "
                   "[--batch 4 (sequences per rank)] [--steps 3] [--reps 5]\n");
      std::exit(2);
    }
  }
  return a;
}

Decoder<float> model(const Args& a) {
  // engram-train's default model: byte-level Llama, SwiGLU at 8/3 d, tied embeddings (3.3M parameters at d 256, 4 layers).
  ModelConfig c = ModelConfig::llama(tasks::ByteTokenizer::vocab_size, a.d_model, a.layers, a.heads, a.heads, (8 * a.d_model / 3 + 31) / 32 * 32);
  c.max_positions = a.context;
  c.tie_embeddings = true;
  Decoder<float> m = Decoder<float>::create(c);
  init_for_training(m, 1);
  return m;
}

train::TrainerOptions trainer_options(const Args& a, Index ranks, train::Collective* c) {
  train::TrainerOptions o;
  o.steps = 1 << 30;
  o.batch = a.batch * ranks;
  o.schedule = {.peak = 1e-3, .min_lr = 1e-4, .warmup = 10, .total = 1 << 30};
  o.eval_every = 0;
  o.collective = c;
  return o;
}

// Wall seconds of `steps` optimizer steps.
double time_steps(train::Trainer<float>& t, Index steps) {
  const auto t0 = Clock::now();
  for (Index i = 0; i < steps; ++i) t.step();
  return seconds_since(t0);
}

// Ring all-reduce on N nodes: every node sends and receives 2 (N - 1) / N of the gradient bytes,
// in 2 (N - 1) messages, each paying the latency.
double ring_allreduce_s(double bytes, int nodes, double bandwidth_bytes_s, double latency_s) {
  if (nodes <= 1) return 0;
  return 2.0 * (nodes - 1) / nodes * bytes / bandwidth_bytes_s + 2.0 * (nodes - 1) * latency_s;
}

}  // namespace

int main(int argc, char** argv) {
  mpi::Session session(argc, argv, /*force=*/true);
  mpi::Communicator& world = *session.world();
  const MPI_Comm comm = world.comm();
  const int R = world.size(), rank = world.rank();
  const bool root = rank == 0;
  const Args a = parse(argc, argv);
  set_num_threads(1);
  const std::string load_before = load_average();

  const auto corpus = train::TextCorpus::kjv();
  const train::WindowSource source(corpus, a.context, 1);
  const Index tokens_per_rank = a.batch * a.context;

  // The three trainers live through every repetition (tapes sized once, by a warm-up step).
  Decoder<float> m_alone = model(a), m_indep = model(a), m_dp = model(a);
  const Index params = m_dp.n_params();
  TimedCollective timed(world);
  train::Trainer<float> alone(m_alone, source, trainer_options(a, 1, nullptr)), indep(m_indep, source, trainer_options(a, 1, nullptr)),
      dp(m_dp, source, trainer_options(a, R, &timed));
  if (root) {
    std::printf("bench_mpi: %d ranks, 1 thread each; byte-level Llama d %lld, %lld layers (%lld parameters, %.1f MB of float gradients); "
                "%lld sequences of %lld tokens per rank per step; %lld steps x %lld repetitions\n",
                R, (long long)a.d_model, (long long)a.layers, (long long)params, 4e-6 * double(params), (long long)a.batch,
                (long long)a.context, (long long)a.steps, (long long)a.reps);
    std::printf("load average before: %s (2 cores; other engineers share the machine)\n", load_before.c_str());
    std::fflush(stdout);
  }
  if (root) alone.step();
  idle_barrier(comm);
  indep.step();
  dp.step();
  MPI_Barrier(comm);

  std::vector<double> alone_tps, indep_tps, dp_tps, grad_share, control_share;
  for (Index rep = 0; rep < a.reps; ++rep) {
    // 1. Rank 0 alone, the others idle.
    double s = 0;
    if (root) s = time_steps(alone, a.steps);
    idle_barrier(comm);
    alone_tps.push_back(double(a.steps * tokens_per_rank) / max_over_ranks(s, comm));
    // 2. Every rank alone at once: no communication, the shared machine's ceiling.
    s = time_steps(indep, a.steps);
    indep_tps.push_back(sum_over_ranks(double(a.steps * tokens_per_rank) / s, comm));
    MPI_Barrier(comm);
    // 3. Data-parallel: R ranks, batch R b.
    timed.gradient_s = timed.control_s = 0;
    s = time_steps(dp, a.steps);
    const double wall = max_over_ranks(s, comm);
    dp_tps.push_back(double(a.steps * tokens_per_rank * R) / wall);
    grad_share.push_back(max_over_ranks(timed.gradient_s, comm) / wall);
    control_share.push_back(max_over_ranks(timed.control_s, comm) / wall);
    MPI_Barrier(comm);
  }

  // 4. The gradient all-reduce alone (after a barrier: no waiting for a slower rank), by bucket size.
  Gradients<float> grads(m_dp);
  struct BucketTime {
    Index elems;
    double ms;
  };
  std::vector<BucketTime> buckets;
  for (Index b : {Index(1) << 14, Index(1) << 16, Index(1) << 18, Index(1) << 20, Index(1) << 22}) {
    train::GradientReducer<float> reducer(b);
    reducer.sum(grads, world);  // warm
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) {
      grads.zero();
      MPI_Barrier(comm);
      const auto t0 = Clock::now();
      reducer.sum(grads, world);
      t.push_back(max_over_ranks(seconds_since(t0), comm));
    }
    buckets.push_back({b, 1e3 * median(t)});
  }

  // 5. Overlap probe: a non-blocking all-reduce of the gradient bytes started before a compute
  //    phase (GEMMs, no MPI calls) and waited for after it. If MPI progressed it in the background,
  //    the pair would cost max(compute, all-reduce), not their sum.
  // At least 16 MB, so the probe is not lost in timer noise on a busy machine.
  std::vector<float> buf(std::size_t(std::max<Index>(grads.numel(), Index(1) << 22)), 1.0f);
  Tensor<float> A({192, 192}), B({192, 192}), C({192, 192});
  for (Index i = 0; i < 192; ++i)
    for (Index j = 0; j < 192; ++j) A(i, j) = B(i, j) = float((i * 7 + j) % 13) * 0.01f;
  auto compute = [&](int n) {
    for (int i = 0; i < n; ++i) matmul<float>(A.view(), B.view(), C.view());
  };
  auto allreduce = [&] { MPI_Allreduce(MPI_IN_PLACE, buf.data(), int(buf.size()), MPI_FLOAT, MPI_SUM, comm); };
  std::vector<double> t_cal;
  Clock::time_point t0;
  for (int i = 0; i < 5; ++i) {
    MPI_Barrier(comm);
    t0 = Clock::now();
    allreduce();
    t_cal.push_back(max_over_ranks(seconds_since(t0), comm));
  }
  // A compute phase of about three all-reduces, the same GEMM count on every rank.
  t0 = Clock::now();
  compute(8);
  const double per_gemm = seconds_since(t0) / 8;
  int n_gemm = int(std::clamp(3 * median(t_cal) / per_gemm, 1.0, 1e6));
  MPI_Allreduce(MPI_IN_PLACE, &n_gemm, 1, MPI_INT, MPI_MAX, comm);
  std::vector<double> t_ar, t_c, t_both;
  for (int i = 0; i < 5; ++i) {
    MPI_Barrier(comm);
    t0 = Clock::now();
    allreduce();
    t_ar.push_back(max_over_ranks(seconds_since(t0), comm));
    MPI_Barrier(comm);
    t0 = Clock::now();
    compute(n_gemm);
    t_c.push_back(max_over_ranks(seconds_since(t0), comm));
    MPI_Barrier(comm);
    t0 = Clock::now();
    MPI_Request req;
    MPI_Iallreduce(MPI_IN_PLACE, buf.data(), int(buf.size()), MPI_FLOAT, MPI_SUM, comm, &req);
    compute(n_gemm);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
    t_both.push_back(max_over_ranks(seconds_since(t0), comm));
  }
  const double hidden = (median(t_ar) + median(t_c) - median(t_both)) / median(t_ar);

  if (root) {
    const double a1 = median(alone_tps), ai = median(indep_tps), ad = median(dp_tps);
    const double gshare = median(grad_share), cshare = median(control_share);
    std::printf("\n%-44s %12s %14s\n", "training throughput (median)", "tokens/s", "vs 1 rank");
    std::printf("%-44s %12.0f %13.2fx\n", "1 rank alone (the others idle)", a1, 1.0);
    std::printf("%-44s %12.0f %13.2fx\n", ("" + std::to_string(R) + " ranks, independent (no communication)").c_str(), ai, ai / a1);
    std::printf("%-44s %12.0f %13.2fx\n", ("" + std::to_string(R) + " ranks, data-parallel").c_str(), ad, ad / a1);
    std::printf("\nscaling efficiency 1 -> %d ranks: %.0f%% of %dx the tokens/s of one rank (goal >= 85%%); %.0f%% of the independent ranks' "
                "(what communication and synchronisation cost)\n",
                R, 100 * ad / (R * a1), R, 100 * ad / ai);
    std::printf("data-parallel step: %.2f%% in the gradient all-reduce (packing, MPI, unpacking: the ranks arrive there together), "
                "%.2f%% in the other collectives (a few bytes each; they absorb the wait for the slower rank's compute)\n",
                100 * gshare, 100 * cshare);
    std::printf("\n%-36s %10s %14s %14s\n", "gradient all-reduce alone (median)", "ms", "GB/s (algo)", "GB/s (bus)");
    const double bytes = 4.0 * double(grads.numel());
    for (const auto& b : buckets)
      std::printf("buckets of %-26lld %10.2f %14.2f %14.2f\n", (long long)b.elems, b.ms, bytes / (1e6 * b.ms), 2.0 * (R - 1) / R * bytes / (1e6 * b.ms));
    std::printf("\noverlap probe (%.1f MB MPI_Iallreduce during %d GEMMs of 192^3, no MPI calls in between): all-reduce %.2f ms, compute "
                "%.2f ms, both %.2f ms: %.0f%% of the all-reduce hidden\n",
                bytes / 1e6, n_gemm, 1e3 * median(t_ar), 1e3 * median(t_c), 1e3 * median(t_both), 100 * hidden);

    // Paper estimate: efficiency = compute / (compute + ring all-reduce), no overlap. Per-node compute
    // from this run's rate: one rank's tokens/s times 6 N FLOPs per token gives the rate of a core
    // (FLOPs of the forward + backward of a dense model), a node has 2 of them.
    const double core_flops = a1 * 6.0 * double(params);
    const double node_flops = 2 * core_flops;
    struct Run {
      const char* name;
      double params, flops_per_token_factor, sequences, tokens_per_sequence;
    };
    // RMT: engram-rmt-train's default (GPT-2 layout, d 64, 2 layers, 4 memory tokens, segments of
    // 128), about 0.13M parameters; BPTT recomputes each segment's forward (8 N FLOPs per token);
    // batch 16 of up to 8 segments. Also a 3M-parameter RMT (the upper bound). TTT: 3M
    // parameters (engram-train's default size; the TTT issue trains equal parameter counts) at
    // context 8192, batch 16; the inner loop adds FLOPs that only help the ratio, left out.
    const Run runs[] = {
        {"RMT 0.13M, batch 16 x 8 x 136", 0.13e6, 8, 16, 8 * 136},
        {"RMT 3M, batch 16 x 8 x 136", 3.0e6, 8, 16, 8 * 136},
        {"RMT 3M, batch 64 x 8 x 136", 3.0e6, 8, 64, 8 * 136},
        {"TTT 3M, batch 16 x 8192", 3.0e6, 6, 16, 8192},
        {"TTT 3M, batch 64 x 8192", 3.0e6, 6, 64, 8192},
    };
    struct Net {
      const char* name;
      double bandwidth, latency;
    };
    const Net nets[] = {{"10 GbE", 1.25e9, 30e-6}, {"100 Gb/s IB", 12.5e9, 2e-6}};
    std::printf("\npaper estimate (a node = 2 of these cores: %.1f GFLOP/s each as measured above; ring all-reduce of the float gradients, "
                "not overlapped):\n", 1e-9 * core_flops);
    std::printf("%-32s %-12s %6s %12s %12s %12s\n", "run", "network", "nodes", "compute ms", "all-reduce ms", "efficiency");
    for (const Run& run : runs)
      for (const Net& net : nets)
        for (int nodes : {8, 64}) {
          // Data parallelism splits whole sequences: with fewer sequences than nodes, nodes idle.
          const double busy = std::min<double>(nodes, run.sequences);
          const double compute_s = std::ceil(run.sequences / busy) * run.tokens_per_sequence * run.flops_per_token_factor * run.params / node_flops;
          const double ar_s2 = ring_allreduce_s(4 * run.params, int(busy), net.bandwidth, net.latency);
          const double eff = compute_s / (compute_s + ar_s2) * busy / nodes;
          std::printf("%-32s %-12s %6d %12.1f %12.2f %11.0f%%%s\n", run.name, net.name, nodes, 1e3 * compute_s, 1e3 * ar_s2, 100 * eff,
                      busy < nodes ? "  (fewer sequences than nodes: the rest idle)" : "");
        }
    std::printf("\nload average after: %s\n", load_average().c_str());
  }
  return session.finish(0);
}
