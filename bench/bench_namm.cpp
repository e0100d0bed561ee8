// NAMM benchmarks: the cost of one NAMM update (features + BAM scorer + gather) against the attention
// compute of the same 512 tokens at cache sizes 1k-32k; decode speed with each eviction policy at a
// fixed budget against the full cache at 32k context.
#include <chrono>
#include <map>
#include <memory>
#include <random>

#include "bench_util.hpp"
#include "engram/namm/factory.hpp"
#include "engram/nn/decoder.hpp"
#include "engram/nn/init.hpp"

using namespace engram;
using namespace engram::namm;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

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
  return namm::make_policy<float>(name == "baseline" ? "none" : name, Budget::of_tokens(kBudget), &w);
}

void decode_with_policy(benchmark::State& state, const std::string& name) {
  set_num_threads(1);
  const auto& m = small_model();
  const auto policy = make_policy(name);
  auto s = m.make_state(policy.get());
  std::vector<std::int32_t> ids(static_cast<std::size_t>(kContext));
  for (Index i = 0; i < kContext; ++i) ids[std::size_t(i)] = std::int32_t((i * 131 + 7) % 4096);
  m.prefill(ids, s, {.chunk = 512});
  for (auto _ : state) {
    auto logits = m.decode(std::int32_t(s.position() % 4096), s);
    benchmark::DoNotOptimize(logits.data());
  }
  Index cached = 0;
  for (auto* c : s.caches()) cached = std::max(cached, c->max_size());
  state.counters["tok_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["cache_tokens"] = double(cached);
  state.counters["state_MiB"] = double(s.bytes()) / (1 << 20);
}

}  // namespace

int main(int argc, char** argv) {
  for (Index n : {1024, 2048, 4096, 8192, 16384, 32768})
    benchmark::RegisterBenchmark("namm_cost:per_layer", namm_cost)->Arg(n)->Unit(benchmark::kMillisecond)->Iterations(n > 8192 ? 1 : 3);
  for (const char* p : {"baseline", "namm", "h2o", "knorm", "streaming", "snapkv", "tova", "recency"})
    benchmark::RegisterBenchmark((std::string("decode_32k:") + p).c_str(), [p](benchmark::State& s) { decode_with_policy(s, p); })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(64);
  return engram::bench::run(argc, argv);
}
