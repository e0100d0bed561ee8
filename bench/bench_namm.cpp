// Cache-policy benchmarks: the cost of one NAMM update (features + BAM scorer + gather) against the
// attention compute of the same 512 tokens at cache sizes 1k-32k; the BAM scorer's backward mask
// against unmasked attention; decode time per token with each policy at a 2048-token budget after
// a 32k-token read, against the full cache of 2048 tokens (same number of cached tokens).
#include <time.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <random>

#include "bench_util.hpp"
#include "engram/namm/checkpoint.hpp"
#include "engram/policies/factory.hpp"
#include "engram/nn/decoder.hpp"
#include "engram/nn/init.hpp"

using namespace engram;
using namespace engram::namm;

namespace {

using Clock = std::chrono::steady_clock;
// The machine is shared: the report notes how busy it was.
std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string line;
  std::getline(f, line);
  return line + "\n";
}
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

std::vector<float> random_theta(std::uint64_t seed, float bias) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> N(0.f, 0.1f);
  std::vector<float> t(4172);
  for (auto& x : t) x = N(rng);
  t[4171] = bias;
  return t;
}

// One attention layer of Llama-3-8B's geometry (32 query heads, 8 KV heads of 128): the per-layer
// cost of NAMM's update against the attention of 512 new queries over n cached keys.
void namm_cost(benchmark::State& state) {
  set_num_threads(1);
  const Index n = state.range(0), n_q = 512, heads = 32, kv = 8, d = 128;
  NammConfig cfg;
  NormStats unit;
  unit.var.fill(1.0);
  const NammPolicy<float> policy(BamScorer<float>(random_theta(1, 0.f)), unit, cfg);
  std::mt19937_64 rng(2);
  std::normal_distribution<float> N(0.f, 1.f);
  LayerCache<float> cache(kv, d);
  policy.attach(cache);
  Tensor<float> k({n, kv * d}), v({n, kv * d}), q({n_q, heads * d}), out({n_q, heads * d});
  for (Tensor<float>* t : {&k, &v, &q})
    for (Index r = 0; r < t->rows(); ++r)
      for (Index c = 0; c < t->cols(); ++c) (*t)(r, c) = N(rng);
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < n; ++i) pos.push_back(i);
  cache.append(k.view(), v.view(), pos);
  for (Index h = 0; h < kv; ++h) {
    auto e = cache.head(h).column(cache.head(h).column_id(kEmaColumn));
    for (Index i = 0; i < n; ++i)
      for (Index f = 0; f < 17; ++f) e(i, f) = std::abs(N(rng));
  }
  std::vector<ConstView<float>> ks, vs;
  for (Index h = 0; h < kv; ++h) ks.push_back(cache.head(h).keys()), vs.push_back(cache.head(h).values());
  AttentionInput<float> in;
  in.q = q.view();
  in.k = ks;
  in.v = vs;
  in.out = out.view();
  in.n_heads = heads;
  in.head_dim = d;

  auto pstate = policy.make_state(1, kv);
  double attention_s = 0, sink_s = 0, features_s = 0, update_s = 0;
  FlopCounter flops;
  for (auto _ : state) {
    auto t0 = Clock::now();
    attention<float>(in);  // what full attention pays for these 512 tokens
    attention_s += seconds_since(t0);

    auto work = cache.copy();
    ProbabilitySink<float>* sink = policy.sink(0, work, pstate.get(), StepInfo{n_q, n, nullptr});
    in.sink = sink;
    t0 = Clock::now();
    attention<float>(in);  // the same attention streaming its probabilities to NAMM (32 hops of STFT + EMA)
    sink_s += seconds_since(t0);
    in.sink = nullptr;

    // The hop work alone (the part of the sink path that is NAMM's own compute).
    t0 = Clock::now();
    SpectrogramTransform<float> stft;
    Tensor<float> scratch({n, 32});
    for (Index hop = 0; hop < n_q / 16; ++hop)
      for (Index h = 0; h < kv; ++h) {
        TokenTable<float>& t = work.head(h);
        stft.complete_hop(t.column(t.column_id(kHistoryColumn)), t.column(t.column_id(kEmaColumn)), 0.85f, scratch.view());
      }
    features_s += seconds_since(t0);

    std::vector<LayerCache<float>*> layer = {&work};
    flops.reset();
    t0 = Clock::now();
    policy.update(layer, pstate.get(), 1 << 20, &flops);  // recency + normalisation + BAM + selection + gather
    update_s += seconds_since(t0);
  }
  const double it = double(state.iterations());
  state.counters["attn_ms"] = 1e3 * attention_s / it;
  state.counters["hops_ms"] = 1e3 * features_s / it;
  state.counters["update_ms"] = 1e3 * update_s / it;
  state.counters["sink_extra_ms"] = 1e3 * (sink_s - attention_s) / it;
  state.counters["update_frac"] = update_s / attention_s;
  state.counters["hops_frac"] = features_s / attention_s;
  state.counters["scorer_GFLOP"] = flops[FlopCategory::namm_scorer] * 1e-9;
}

// The BAM scorer's backward mask: token i attends to tokens j >= i, so the kernel skips the key
// blocks below each query block. One head of width 32 (the scorer's), n tokens: the masked
// attention against the same attention unmasked (baseline) shows the skipped half.
void bam_mask(benchmark::State& state, MaskKind mask) {
  set_num_threads(1);
  const Index n = state.range(0), d = namm::NammConfig::kHidden;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> N(0.f, 1.f);
  Tensor<float> q({n, d}), k({n, d}), v({n, d}), out({n, d});
  for (Tensor<float>* t : {&q, &k, &v})
    for (Index r = 0; r < n; ++r)
      for (Index c = 0; c < d; ++c) (*t)(r, c) = N(rng);
  const std::vector<ConstView<float>> ks = {k.view()}, vs = {v.view()};
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = 1, in.head_dim = d, in.mask = mask;
  for (auto _ : state) {
    attention<float>(in);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["pairs_M"] = visible_pairs(in, 0) * 1e-6;
}

// What streaming probabilities costs a decode step: one query over 2048 cached keys in the decode
// benchmark's layer geometry (8 query heads, 2 KV heads of 32), attention alone (baseline) against
// attention with a sink that does nothing (the kernel's second pass over the keys is the cost H2O
// and TOVA pay each step, on top of their own bookkeeping).
class NullSink final : public ProbabilitySink<float> {
 public:
  void consume(Index, Index, Index, ConstView<float> probs) override { benchmark::DoNotOptimize(probs.data()); }
};
void sink_decode(benchmark::State& state, bool with_sink) {
  set_num_threads(1);
  constexpr Index n = 2048, heads = 8, kv = 2, d = 32;
  std::mt19937_64 rng(6);
  std::normal_distribution<float> N(0.f, 1.f);
  Tensor<float> q({1, heads * d}), out({1, heads * d});
  std::vector<Tensor<float>> k, v;
  for (Index h = 0; h < kv; ++h) k.emplace_back(Shape{n, d}), v.emplace_back(Shape{n, d});
  for (Tensor<float>* t : {&q, &k[0], &k[1], &v[0], &v[1]})
    for (Index r = 0; r < t->rows(); ++r)
      for (Index c = 0; c < t->cols(); ++c) (*t)(r, c) = N(rng);
  const std::vector<ConstView<float>> ks = {k[0].view(), k[1].view()}, vs = {v[0].view(), v[1].view()};
  NullSink sink;
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = heads, in.head_dim = d;
  in.sink = with_sink ? &sink : nullptr;
  for (auto _ : state) {
    attention<float>(in);
    benchmark::DoNotOptimize(out.data());
  }
}

// A small model so that 32k-token prefills finish in seconds.
const Decoder<float>& small_model() {
  static const auto m = bench::random_llama(4096, 256, 4, 8, 2, 768, 3);
  return m;
}

constexpr Index kContext = 32768, kBudget = 2048;

std::unique_ptr<CachePolicy<float>> make_policy(const std::string& name) {
  // NAMM with random weights, capped at the budget like the baselines.
  NammWeights<float> w;
  const auto theta = random_theta(4, 0.f);
  w.theta = Tensor<float>({Index(theta.size())});
  for (Index i = 0; i < w.theta.numel(); ++i) w.theta[i] = theta[std::size_t(i)];
  w.stats.var.fill(1.0);
  const auto weights = std::make_shared<const NammWeights<float>>(std::move(w));
  const std::vector<policies::NamedPolicy<float>> namm = {{"namm", [weights](Budget b) { return weights->make_policy(b); }}};
  return policies::make_policy<float>(name, Budget::of_tokens(kBudget), namm);
}

// A policy and the state it left after reading the context, built once per policy (the 32k-token
// reads take seconds) and copied for every run.
struct Prepared {
  std::unique_ptr<CachePolicy<float>> policy;
  Decoder<float>::State state;
};
Prepared& prepared(const std::string& name) {
  static std::map<std::string, Prepared> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  const auto& m = small_model();
  Prepared p;
  p.policy = name == "baseline" ? nullptr : make_policy(name);
  p.state = m.make_state(p.policy.get());
  // The baseline is the full cache of the same number of tokens (the budget): what a policy's
  // decode should cost; the policies read the whole context and keep the budget.
  const Index read = name == "baseline" ? kBudget : kContext;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(read));
  for (Index i = 0; i < read; ++i) ids[std::size_t(i)] = std::int32_t((i * 131 + 7) % 4096);
  m.prefill(ids, p.state, {.chunk = 512});
  p.state.end_prompt();  // SnapKV and ExpectedAttention compress here; the others ignore it
  return cache.emplace(name, std::move(p)).first->second;
}

// Decode time per token with a policy at a 2048-token budget after a 32k-token read, against the
// full cache of 2048 tokens (the baseline). Timed: the decode step (policy hooks and eviction
// included), in thread CPU time (one thread: on a shared, oversubscribed machine the wall clock
// mostly measures the other processes; wall_ms reports it too). The baseline drops its oldest
// token after each step, untimed, to stay at 2048.
void decode_with_policy(benchmark::State& state, const std::string& name) {
  set_num_threads(1);
  const auto& m = small_model();
  Prepared& p = prepared(name);
  auto s = p.state.copy();
  double wall = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const double c0 = thread_cpu_seconds();
    auto logits = m.decode(std::int32_t(s.position() % 4096), s);
    benchmark::DoNotOptimize(logits.data());
    state.SetIterationTime(thread_cpu_seconds() - c0);
    wall += seconds_since(t0);
    if (name == "baseline")
      for (LayerCache<float>* c : s.caches())
        for (Index h = 0; h < c->n_heads(); ++h) {
          TokenTable<float>& t = c->head(h);
          Index oldest = 0;
          for (Index i = 1; i < t.size(); ++i)
            if (t.position(i) < t.position(oldest)) oldest = i;
          t.evict(std::span<const Index>(&oldest, 1));
        }
  }
  Index cached = 0, tables = 0, total = 0;
  std::size_t row = 0;
  for (auto* c : s.caches()) {
    cached = std::max(cached, c->max_size());
    for (Index h = 0; h < c->n_heads(); ++h) row = c->head(h).bytes_per_token(), total += c->head(h).size(), ++tables;
  }
  state.counters["wall_ms"] = 1e3 * wall / double(state.iterations());
  state.counters["cache_tokens"] = double(cached);
  state.counters["B_per_token"] = double(row);  // key + value rows + the packed position and policy columns
  state.counters["policy_B_per_token"] = double(row) - double(2 * padded_cols<float>(m.config.head_dim) * sizeof(float)) - 8;
  state.counters["state_B_per_token"] = double(s.bytes()) / double(std::max<Index>(total, 1));  // capacity and policy state included
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("load average at start: %s", load_average().c_str());
  for (Index n : {1024, 2048, 4096, 8192, 16384, 32768})
    benchmark::RegisterBenchmark("namm_cost:per_layer", namm_cost)->Arg(n)->Unit(benchmark::kMillisecond)->Iterations(n > 8192 ? 1 : 3);
  for (Index n : {1024, 4096})
    for (const auto& [variant, mask] : {std::pair{"baseline", MaskKind::none}, std::pair{"reverse_causal", MaskKind::reverse_causal}})
      benchmark::RegisterBenchmark((std::string("bam_mask:") + variant).c_str(), [mask = mask](benchmark::State& s) { bam_mask(s, mask); })
          ->Arg(n)
          ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("sink_decode:baseline", [](benchmark::State& s) { sink_decode(s, false); })->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("sink_decode:with_sink", [](benchmark::State& s) { sink_decode(s, true); })->Unit(benchmark::kMicrosecond);
  for (const char* p : {"baseline", "h2o", "tova", "recency", "streaming", "knorm", "keydiff", "snapkv", "expected_attention", "namm"})
    benchmark::RegisterBenchmark((std::string("decode_2k:") + p).c_str(), [p](benchmark::State& s) { decode_with_policy(s, p); })
        ->Unit(benchmark::kMillisecond)
        ->UseManualTime()
        ->Iterations(256)
        ->Repetitions(5);  // a decode step is ~1 ms: one run of 256 moves by 10-50% with the machine's load, the median of 5 does not
  const int status = engram::bench::run(argc, argv);
  std::printf("load average at end: %s", load_average().c_str());
  return status;
}
