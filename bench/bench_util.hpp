// Benchmark support: a reporter that prints each variant as a ratio to the baseline measured in the
// same run (these machines are shared and noisy), and the machine's measured FMA peak.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/core/simd.hpp"
#include "engram/nn/decoder.hpp"
#include "engram/nn/init.hpp"

namespace engram::bench {

/// Benchmarks are named "family:variant/args". For every family/args that has a variant named
/// "baseline", the reporter prints baseline_time / variant_time (> 1 means faster than baseline),
/// using the median over repetitions. Runs with a "GFLOPs" counter and a "threads" counter are also
/// shown as a fraction of the FMA peak measured in the same run ("fma_peak:..." benchmarks).
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred || r.run_type != Run::RT_Iteration) continue;
      Entry& e = entries_[strip_options(r.benchmark_name())];
      e.times.push_back(r.GetAdjustedRealTime());
      for (const auto& [name, counter] : r.counters) e.counters[name].push_back(counter.value);
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    std::map<std::string, double> peak_by_threads;
    for (auto& [name, e] : entries_)
      if (name.rfind("fma_peak:", 0) == 0 && e.counters.count("GFLOPs") && e.counters.count("threads"))
        peak_by_threads[std::to_string(int(median(e.counters["threads"])))] = median(e.counters["GFLOPs"]);
    std::printf("\n%-40s %14s %10s %10s\n", "benchmark (median of runs)", "time/iter", "vs base", "of peak");
    for (auto& [name, e] : entries_) {
      const auto colon = name.find(':');
      const auto slash = name.find('/', colon);
      std::string ratio = "-", peak = "-";
      if (colon != std::string::npos) {
        const std::string family = name.substr(0, colon);
        const std::string args = slash == std::string::npos ? "" : name.substr(slash);
        const auto base = entries_.find(family + ":baseline" + args);
        if (base != entries_.end() && base->first != name) ratio = fmt(median(base->second.times) / median(e.times), "x");
      }
      if (e.counters.count("GFLOPs") && e.counters.count("threads")) {
        const auto p = peak_by_threads.find(std::to_string(int(median(e.counters["threads"]))));
        if (p != peak_by_threads.end() && name.rfind("fma_peak:", 0) != 0)
          peak = fmt(100.0 * median(e.counters["GFLOPs"]) / p->second, "%");
      }
      std::string notes;
      for (auto& [counter, values] : e.counters)
        if (counter != "threads") notes += " " + counter + "=" + fmt(median(values), "");
      std::printf("%-40s %14.4g %10s %10s %s\n", name.c_str(), median(e.times), ratio.c_str(), peak.c_str(), notes.c_str());
    }
  }

 private:
  struct Entry {
    std::vector<double> times;
    std::map<std::string, std::vector<double>> counters;
  };
  // Drops the run options Google Benchmark appends ("/iterations:3", "/manual_time", ...), so a
  // variant and its baseline pair up even when they are timed differently.
  static std::string strip_options(const std::string& name) {
    std::string out;
    std::size_t start = 0;
    while (start <= name.size()) {
      const std::size_t end = std::min(name.find('/', start), name.size());
      const std::string part = name.substr(start, end - start);
      const bool option = part.find(':') != std::string::npos && part.find(':') > 0 && start > 0 &&
                          (part.rfind("iterations:", 0) == 0 || part.rfind("repeats:", 0) == 0 ||
                           part.rfind("threads:", 0) == 0 || part.rfind("min_time:", 0) == 0);
      if (!option && part != "manual_time" && part != "real_time") out += (out.empty() ? "" : "/") + part;
      start = end + 1;
    }
    return out;
  }
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  }
  static std::string fmt(double x, const char* unit) {
    char buf[32];
    std::snprintf(buf, sizeof buf, std::abs(x) >= 1e5 || (x != 0 && std::abs(x) < 1e-2) ? "%.3g%s" : "%.2f%s", x, unit);
    return buf;
  }
  std::map<std::string, Entry> entries_;
};

/// GFLOP/s counter from a FLOP count per iteration.
inline benchmark::Counter gflops(double flops_per_iteration) {
  return benchmark::Counter(flops_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Single-precision FMA throughput with independent register accumulators (enough chains to hide
/// the 4-cycle latency on both FMA ports: at least 8), on `threads` threads: the machine's practical
/// peak. 16 chains on AVX-512's 32 registers; 12 on AVX2's 16, where 16 chains and the 2 constants
/// spilled to the stack and under-reported the peak by 1.78x (every "of peak" inflated).
inline void fma_peak(benchmark::State& state) {
  const int threads = int(state.range(0));
  using B = simd::batch<float>;
  constexpr int kChains = std::min(16, simd::kVectorRegisters - 4);
  constexpr long kSteps = 1 << 16;
  set_num_threads(threads);
  for (auto _ : state) {
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      B acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = B(float(i) * 1e-3f);
      const B a(0.999999f), b(1e-7f);
      for (long s = 0; s < kSteps; ++s)
#pragma GCC unroll 16  // unrolled, the chains live in registers (at -O2 GCC kept them in memory)
        for (int i = 0; i < kChains; ++i) acc[i] = xsimd::fma(acc[i], a, b);
      for (int i = 1; i < kChains; ++i) acc[0] += acc[i];
      sink += simd::reduce_add(acc[0]);
    }
    benchmark::DoNotOptimize(sink);
  }
  state.counters["GFLOPs"] = gflops(2.0 * kChains * B::size * kSteps * threads);
  state.counters["threads"] = threads;
}

inline void register_fma_peak(int max_threads) {
  for (int t = 1; t <= max_threads; ++t)
    benchmark::RegisterBenchmark(("fma_peak:t" + std::to_string(t)).c_str(), fma_peak)->Arg(t)->UseRealTime();
}

/// STREAM triad a = b + 0.5 c split over `threads` threads (a static share each), best of 3, in
/// bytes/s with the STREAM convention (3 arrays). 128 MiB per array: 384 MiB, beyond the largest
/// last-level cache seen on these machines (260 MiB on a Xeon; 3 x 64 MiB would have fit in it).
/// Leaves the pool at `threads` threads.
inline double triad_bandwidth(int threads) {
  using Clock = std::chrono::steady_clock;
  constexpr Index n = Index(1) << 25;
  static std::vector<float> a(std::size_t(n), 1.f), b(std::size_t(n), 2.f), c(std::size_t(n), 3.f);
  set_num_threads(threads);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    parallel_for(0, threads, [&](Index t) {
      const Index lo = n * t / threads, hi = n * (t + 1) / threads;
      float* pa = a.data();
      const float* pb = b.data();
      const float* pc = c.data();
      for (Index i = lo; i < hi; ++i) pa[i] = pb[i] + 0.5f * pc[i];
    });
    benchmark::DoNotOptimize(a.data());
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 3.0 * sizeof(float) * double(n) / sec);
  }
  return best;
}

/// A Llama-style model with random weights (tied head, unbounded positions) for benchmarks.
inline Decoder<float> random_llama(Index vocab, Index d_model, Index layers, Index heads, Index kv_heads, Index d_ff, std::uint64_t seed) {
  auto c = ModelConfig::llama(vocab, d_model, layers, heads, kv_heads, d_ff);
  c.tie_embeddings = true;
  c.max_positions = 1 << 22;
  auto m = Decoder<float>::create(c);
  init_random(m, seed);
  return m;
}

/// main(): runs the registered benchmarks through the ratio reporter.
inline int run(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace engram::bench
