// Decoder benchmarks: decode of a ~110M-parameter Llama-style model against the memory-bandwidth
// bound (parameter bytes / triad bandwidth, measured here), in every weight format at contexts 128
// and 1024 on 1 and 2 threads (bound: the bytes that format reads per token, weights and KV cache,
// at the triad bandwidth of as many threads), batched decode of 8 sequences against the same 8
// decoded one after another, prefill against the GEMM rate measured here, and full
// attention's growth (prefill time, decode time per token, KV bytes) from 1k to 16k, and loading a
// BF16 checkpoint as bf16 in place against converting it.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "bench_util.hpp"
#include "engram/io/hf.hpp"
#include "engram/io/hf_save.hpp"
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

// The 110M model with its Linears and head stored in `f` (the same random weights as model_110m()).
const Decoder<float>& model_110m_as(WeightFormat f) {
  if (f == WeightFormat::f32) return model_110m();
  static std::map<WeightFormat, std::unique_ptr<Decoder<float>>> models;
  auto& m = models[f];
  if (!m) {
    m = std::make_unique<Decoder<float>>(bench::random_llama(32000, 768, 12, 12, 12, 2048, 1));
    m->compress_weights(f);
  }
  return *m;
}

// Bytes one decode step reads: the stored weights and the KV cache at the context (K and V rows,
// 4 bytes a value in f32, 2 in f16/bf16).
double decode_bytes(const Decoder<float>& m, Index context, WeightFormat kv) {
  const ModelConfig& c = m.config;
  const double value_bytes = kv == WeightFormat::f32 ? 4.0 : 2.0;
  return double(m.streamed_weight_bytes()) + 2.0 * double(c.n_layers * c.n_kv_heads * c.head_dim) * double(context) * value_bytes;
}

// A fresh state of m with its KV caches stored as `kv` (LayerCache::set_format on the empty caches).
Decoder<float>::State state_with_kv(const Decoder<float>& m, WeightFormat kv) {
  auto s = m.make_state();
  for (LayerCache<float>* c : s.caches()) c->set_format(kv);
  return s;
}

// Decode at a fixed context (range 0) on range(1) threads, weights in f and the KV cache in kv:
// the state is reset every 32 tokens.
void decode_format(benchmark::State& state, WeightFormat f, WeightFormat kv) {
  const Index context = state.range(0);
  const int threads = int(state.range(1));
  set_num_threads(threads);
  const auto& m = model_110m_as(f);
  auto s = state_with_kv(m, kv);
  m.prefill(tokens(context, m.config.vocab_size), s, {.chunk = 512});
  const auto snapshot = s.copy();
  Index steps = 0;
  for (auto _ : state) {
    if (++steps % 32 == 0) {
      state.PauseTiming();
      s = snapshot.copy();
      state.ResumeTiming();
    }
    auto logits = m.decode(std::int32_t(steps % m.config.vocab_size), s);
    benchmark::DoNotOptimize(logits.data());
  }
  const double bytes = decode_bytes(m, context, kv);
  state.counters["tok_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weights_MB"] = double(m.streamed_weight_bytes()) * 1e-6;
}

// Its bound: those bytes at the triad bandwidth of the same thread count, measured now.
void decode_format_bound(benchmark::State& state, WeightFormat f, WeightFormat kv) {
  const Index context = state.range(0);
  const int threads = int(state.range(1));
  const double bytes = decode_bytes(model_110m_as(f), context, kv);
  for (auto _ : state) {
    const double bw = bench::triad_bandwidth(threads);
    state.SetIterationTime(bytes / bw);
    state.counters["triad_GBps"] = bw * 1e-9;
  }
}

// B sequences (range 0) at context 128, one thread: one batched step for all of them
// (Decoder::decode_batch), against the baseline of the same B sequences decoded one after another.
template <bool Batched>
void decode_batch(benchmark::State& state, WeightFormat f) {
  set_num_threads(1);
  const Index B = state.range(0);
  const auto& m = model_110m_as(f);
  std::vector<Decoder<float>::State> snapshot;
  for (Index b = 0; b < B; ++b) {
    snapshot.push_back(m.make_state());
    m.prefill(tokens(128 + b, m.config.vocab_size), snapshot.back(), {.chunk = 512});
  }
  std::vector<Decoder<float>::State> s;
  for (const auto& x : snapshot) s.push_back(x.copy());
  std::vector<Decoder<float>::State*> ptrs;
  for (auto& x : s) ptrs.push_back(&x);
  std::vector<std::int32_t> next(static_cast<std::size_t>(B), 5);
  Index steps = 0;
  for (auto _ : state) {
    if (++steps % 32 == 0) {
      state.PauseTiming();
      for (Index b = 0; b < B; ++b) s[std::size_t(b)] = snapshot[std::size_t(b)].copy();
      state.ResumeTiming();
    }
    if constexpr (Batched) {
      auto logits = m.decode_batch(next, ptrs);
      benchmark::DoNotOptimize(logits.data());
    } else {
      for (Index b = 0; b < B; ++b) {
        auto logits = m.decode(next[std::size_t(b)], s[std::size_t(b)]);
        benchmark::DoNotOptimize(logits.data());
      }
    }
  }
  state.counters["tok_per_s"] = benchmark::Counter(double(state.iterations() * B), benchmark::Counter::kIsRate);
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
    const double bw = bench::triad_bandwidth(1);
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

/// The 110M model saved as a BF16 checkpoint (219 MB) in a temporary directory, removed at exit.
const std::filesystem::path& bf16_checkpoint() {
  struct Dir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("engram_bench_bf16_" + std::to_string(::getpid()));
    Dir() { hf::save_decoder<float>(model_110m(), path, nullptr, safetensors::DType::BF16); }
    ~Dir() { std::filesystem::remove_all(path); }
  };
  static const Dir dir;
  return dir.path;
}

/// This process's private resident memory in MB (RssAnon: not the page cache behind a mapping).
double private_mb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("RssAnon:", 0) == 0) return std::stod(line.substr(8)) / 1e3;
  return 0;
}

// Loading the BF16 checkpoint as bf16: in place (hf::LoadOptions::weights: the projections and the
// tied head stay in the file's mapping) against the baseline of converting every tensor to f32 and
// compressing to bf16; private memory the loaded model adds.
void load_bf16(benchmark::State& state, bool in_place) {
  set_num_threads(1);
  const std::filesystem::path& dir = bf16_checkpoint();
  double mb = 0;
  for (auto _ : state) {
    const double before = private_mb();  // the random model the checkpoint was saved from stays resident
    Decoder<float> m = in_place ? hf::load_decoder<float>(dir, {.weights = WeightFormat::bf16}) : hf::load_decoder<float>(dir);
    if (!in_place) m.compress_weights(WeightFormat::bf16);
    mb = private_mb() - before;
    benchmark::DoNotOptimize(&m);
  }
  state.counters["private_MB"] = mb;
}

}  // namespace

int main(int argc, char** argv) {
  bench::register_fma_peak(1);
  benchmark::RegisterBenchmark("decode:engram/110M", decode_engram)->Unit(benchmark::kMillisecond)->Iterations(30);
  benchmark::RegisterBenchmark("decode:baseline/110M", decode_bound)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
  for (WeightFormat f : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::f16, WeightFormat::q8, WeightFormat::q4}) {
    // The KV cache in f32, and in f16 at context 1024, where the f32 cache is more bytes than q4 weights.
    for (WeightFormat kv : {WeightFormat::f32, WeightFormat::f16}) {
      const std::string family = "decode_" + std::string(format_name(f)) + (kv == WeightFormat::f32 ? "" : "_kv16");
      for (Index context : {128, 1024}) {
        if (kv != WeightFormat::f32 && context != 1024) continue;
        for (Index threads : {1, 2}) {
          benchmark::RegisterBenchmark((family + ":engram").c_str(), decode_format, f, kv)
              ->Args({context, threads})->Unit(benchmark::kMillisecond)->Iterations(64)->UseRealTime();
          benchmark::RegisterBenchmark((family + ":baseline").c_str(), decode_format_bound, f, kv)
              ->Args({context, threads})->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
        }
      }
    }
  }
  for (WeightFormat f : {WeightFormat::f32, WeightFormat::q8}) {
    const std::string family = "batch_" + std::string(format_name(f));
    benchmark::RegisterBenchmark((family + ":engram").c_str(), decode_batch<true>, f)->Arg(8)->Unit(benchmark::kMillisecond)->Iterations(32)->UseRealTime();
    benchmark::RegisterBenchmark((family + ":baseline").c_str(), decode_batch<false>, f)->Arg(8)->Unit(benchmark::kMillisecond)->Iterations(8)->UseRealTime();
  }
  benchmark::RegisterBenchmark("load_bf16:engram", load_bf16, true)->Unit(benchmark::kMillisecond)->Iterations(5);
  benchmark::RegisterBenchmark("load_bf16:baseline", load_bf16, false)->Unit(benchmark::kMillisecond)->Iterations(5);
  benchmark::RegisterBenchmark("prefill:engram", prefill_engram)->Arg(2048)->Unit(benchmark::kMillisecond)->Iterations(2);
  benchmark::RegisterBenchmark("prefill:baseline", prefill_gemm_rate)->Arg(2048)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
  for (Index t : {1024, 2048, 4096, 8192, 16384}) {
    benchmark::RegisterBenchmark("growth:prefill", growth_prefill)->Arg(t)->Unit(benchmark::kMillisecond)->Iterations(1);
    benchmark::RegisterBenchmark("growth:decode", growth_decode)->Arg(t)->Unit(benchmark::kMillisecond)->Iterations(32);
  }
  return engram::bench::run(argc, argv);
}
