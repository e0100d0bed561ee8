// Decoder benchmarks: decode of a ~110M-parameter Llama-style model against the memory-bandwidth
// bound (parameter bytes / triad bandwidth, measured here), prefill against the GEMM rate measured
// here, and full attention's growth (prefill time, decode time per token, KV bytes) from 1k to 16k.
#include <chrono>
#include <memory>

#include "bench_util.hpp"
#include "engram/nn/decoder.hpp"
#include "engram/nn/init.hpp"

using namespace engram;

namespace {

using Clock = std::chrono::steady_clock;

/// Llama-style, d = 768, 12 layers, 12 heads of 64, SwiGLU 2048, vocab 32000, tied: 110M parameters.
const Decoder<float>& model_110m() {
  static const auto m = bench::random_llama(32000, 768, 12, 12, 12, 2048, 1);
  return m;
}

/// A smaller model for the growth table (so 16k-token prefills finish in seconds).
const Decoder<float>& model_small() {
  static const auto m = bench::random_llama(4096, 256, 4, 4, 4, 768, 2);
  return m;
}

std::vector<std::int32_t> tokens(Index n, Index vocab) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) t[std::size_t(i)] = std::int32_t((i * 7919 + 13) % vocab);
  return t;
}

double param_bytes(const Decoder<float>& m) { return double(m.n_params()) * sizeof(float); }

// STREAM triad a = b + s c on one thread; returns bytes/s with the STREAM convention (3 arrays).
double triad_bandwidth() {
  constexpr std::size_t n = std::size_t(1) << 24;  // 64 MiB per array: far beyond the caches
  static std::vector<float> a(n, 1.f), b(n, 2.f), c(n, 3.f);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    float* pa = a.data();
    const float* pb = b.data();
    const float* pc = c.data();
    for (std::size_t i = 0; i < n; ++i) pa[i] = pb[i] + 0.5f * pc[i];
    benchmark::DoNotOptimize(pa);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 3.0 * sizeof(float) * double(n) / s);
  }
  return best;
}

void decode_engram(benchmark::State& state) {
  set_num_threads(1);
  const auto& m = model_110m();
  auto s = m.make_state();
  m.prefill(tokens(16, m.config.vocab_size), s);
  std::int32_t next = 5;
  for (auto _ : state) {
    auto logits = m.decode(next, s);
    next = std::int32_t(s.position() % m.config.vocab_size);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tok_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["params_M"] = double(m.n_params()) * 1e-6;
}

// The bound: the time to stream every parameter once at the triad bandwidth measured now.
void decode_bound(benchmark::State& state) {
  set_num_threads(1);
  const double bytes = param_bytes(model_110m());
  for (auto _ : state) {
    const double bw = triad_bandwidth();
    state.SetIterationTime(bytes / bw);
    state.counters["triad_GBps"] = bw * 1e-9;
  }
}

double prefill_flops(const Decoder<float>& m, Index t) {
  auto s = m.make_state();
  m.prefill(tokens(t, m.config.vocab_size), s);
  return s.flops.total();
}

void prefill_engram(benchmark::State& state) {
  set_num_threads(1);
  const auto& m = model_110m();
  const Index t = state.range(0);
  const auto ids = tokens(t, m.config.vocab_size);
  double flops = 0;
  for (auto _ : state) {
    auto s = m.make_state();
    auto logits = m.prefill(ids, s);
    flops = s.flops.total();
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["GFLOPs"] = bench::gflops(flops);
  state.counters["threads"] = 1;
}

// The same FLOP count at the rate of a representative projection GEMM ([T, 768] x [2048, 768]^T).
void prefill_gemm_rate(benchmark::State& state) {
  set_num_threads(1);
  const Index t = state.range(0);
  const double flops = prefill_flops(model_110m(), t);
  Tensor<float> a({t, 768}), w({2048, 768}), c({t, 2048});
  a.fill(0.01f);
  w.fill(0.02f);
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (int rep = 0; rep < 3; ++rep) matmul_nt<float>(a.view(), w.view(), c.view());
    const double s = std::chrono::duration<double>(Clock::now() - t0).count() / 3;
    const double rate = flops::gemm(t, 2048, 768) / s;
    state.SetIterationTime(flops / rate);
    state.counters["gemm_GFLOPs"] = rate * 1e-9;
  }
}

// Full attention's growth with context length: the baseline every memory layer is compared against.
void growth_prefill(benchmark::State& state) {
  set_num_threads(1);
  const auto& m = model_small();
  const auto ids = tokens(state.range(0), m.config.vocab_size);
  std::size_t kv = 0;
  double flops = 0;
  for (auto _ : state) {
    auto s = m.make_state();
    m.prefill(ids, s, {.chunk = 1024});
    kv = s.bytes();
    flops = s.flops.total();
  }
  state.counters["KV_MiB"] = double(kv) / (1 << 20);
  state.counters["GFLOP"] = flops * 1e-9;
}

void growth_decode(benchmark::State& state) {
  set_num_threads(1);
  const auto& m = model_small();
  auto s = m.make_state();
  m.prefill(tokens(state.range(0), m.config.vocab_size), s, {.chunk = 1024});
  const auto snapshot = s.copy();
  Index steps = 0;
  for (auto _ : state) {
    if (++steps % 64 == 0) {  // keep the context at the nominal length
      state.PauseTiming();
      s = snapshot.copy();
      state.ResumeTiming();
    }
    auto logits = m.decode(7, s);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["KV_MiB"] = double(s.bytes()) / (1 << 20);
}

}  // namespace

int main(int argc, char** argv) {
  bench::register_fma_peak(1);
  benchmark::RegisterBenchmark("decode:engram/110M", decode_engram)->Unit(benchmark::kMillisecond)->Iterations(30);
  benchmark::RegisterBenchmark("decode:baseline/110M", decode_bound)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
  benchmark::RegisterBenchmark("prefill:engram", prefill_engram)->Arg(2048)->Unit(benchmark::kMillisecond)->Iterations(2);
  benchmark::RegisterBenchmark("prefill:baseline", prefill_gemm_rate)->Arg(2048)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
  for (Index t : {1024, 2048, 4096, 8192, 16384}) {
    benchmark::RegisterBenchmark("growth:prefill", growth_prefill)->Arg(t)->Unit(benchmark::kMillisecond)->Iterations(1);
    benchmark::RegisterBenchmark("growth:decode", growth_decode)->Arg(t)->Unit(benchmark::kMillisecond)->Iterations(32);
  }
  return engram::bench::run(argc, argv);
}
