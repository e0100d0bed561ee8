// NAMM against the independent PyTorch reference (features, recency, normalisation, BAM, selection
// over four updates with 2 layers x 2 KV heads and GQA groups of 2), unit cases, and invariants:
// streaming features == batched features, eviction keeps every column in lockstep.
#include <numbers>

#include "engram/namm/checkpoint.hpp"
#include "engram/namm/policy.hpp"
#include "test_util.hpp"

using namespace engram;
using namespace engram::namm;

namespace {

std::vector<float> flat(const Tensor<float>& t) {
  std::vector<float> v;
  for (Index r = 0; r < t.rows(); ++r)
    for (Index c = 0; c < t.cols(); ++c) v.push_back(t(r, c));
  return v;
}

NormStats stats_from(const Checkpoint& f) {
  NormStats s;
  const auto mu = flat(f.read<float>("norm.mu")), var = flat(f.read<float>("norm.var"));
  for (std::size_t i = 0; i < mu.size(); ++i) s.mean[i] = mu[i], s.var[i] = var[i];
  s.count = 1;
  return s;
}

// Feeds one update's attention (averaged over each GQA group, as the attention kernel's sink does)
// through the policy's sink in tiles of 16 queries.
void feed_update(const NammPolicy<float>& policy, const Checkpoint& f, Index u, Index l, LayerCache<float>& cache,
                 PolicyState* state) {
  const auto attn = f.read<float>("attn.u" + std::to_string(u) + ".l" + std::to_string(l));  // [4, 48, n]
  const Index n_up = 48, n = attn.dim(2);
  ProbabilitySink<float>* sink = policy.sink(l, cache, state, StepInfo{n_up, n_up * (u + 1), nullptr});
  for (Index h = 0; h < 2; ++h)
    for (Index q0 = 0; q0 < n_up; q0 += 16) {
      Tensor<float> tile({16, n});
      for (Index r = 0; r < 16; ++r)
        for (Index j = 0; j < n; ++j) tile(r, j) = 0.5f * (attn.mat(2 * h)(q0 + r, j) + attn.mat(2 * h + 1)(q0 + r, j));
      sink->consume(h, q0, 0, tile.view());
      sink->rows_done(h, q0, 16);
    }
}

void append_tokens(LayerCache<float>& cache, Index first_position, Index n) {
  Tensor<float> kv({n, cache.n_heads() * cache.head(0).head_dim()});
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < n; ++i) pos.push_back(first_position + i);
  cache.append(kv.view(), kv.view(), pos);
}

double rel(const std::vector<float>& got, const std::vector<float>& ref) {
  REQUIRE(got.size() == ref.size());
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, double(std::abs(got[i] - ref[i]))), scale = std::max(scale, double(std::abs(ref[i])));
  return err / scale;
}

}  // namespace

TEST_CASE("NAMM matches the PyTorch reference over four updates with GQA", "[namm][golden]") {
  const Checkpoint f = Checkpoint::open(test::fixture("namm/namm_synthetic.safetensors"));
  const auto theta = flat(f.read<float>("theta"));
  NammConfig cfg;
  cfg.n_up = 48;
  NammPolicy<float> policy(BamScorer<float>(theta), stats_from(f), cfg);
  policy.record = true;
  auto state = policy.make_state(2, 2);
  std::vector<LayerCache<float>> caches;
  for (int l = 0; l < 2; ++l) caches.emplace_back(2, 8), policy.attach(caches.back());
  std::vector<LayerCache<float>*> ptrs = {&caches[0], &caches[1]};

  for (Index u = 0; u < 4; ++u) {
    for (Index l = 0; l < 2; ++l) {
      append_tokens(caches[std::size_t(l)], 48 * u, 48);
      feed_update(policy, f, u, l, caches[std::size_t(l)], state.get());
    }
    // Before eviction: positions and the EMA features of every head.
    std::vector<std::vector<float>> ema_before(4);
    for (Index l = 0; l < 2; ++l) {
      const std::string key = ".u" + std::to_string(u) + ".l" + std::to_string(l);
      const auto pos = f.read<std::int64_t>("pos" + key);
      const auto ema = f.read<float>("ema" + key);
      for (Index h = 0; h < 2; ++h) {
        const TokenTable<float>& t = caches[std::size_t(l)].head(h);
        REQUIRE(t.size() == pos.dim(1));
        for (Index i = 0; i < t.size(); ++i) REQUIRE(t.position(i) == pos(h, i));
        INFO("update " << u << " layer " << l << " head " << h);
        CHECK(test::relative_error<float>(t.column(t.column_id(kEmaColumn)), ema.mat(h)) <= 1e-5);
      }
    }
    policy.update(ptrs, state.get(), 48 * (u + 1), nullptr);
    const auto& decisions = NammPolicy<float>::last_update(state.get());
    for (Index l = 0; l < 2; ++l) {
      const std::string key = ".u" + std::to_string(u) + ".l" + std::to_string(l);
      const auto features = f.read<float>("features" + key), scores = f.read<float>("scores" + key);
      const auto kept = f.read<std::int64_t>("kept" + key);
      const auto hist = f.read<float>("hist" + key);
      for (Index h = 0; h < 2; ++h) {
        INFO("update " << u << " layer " << l << " head " << h);
        const auto& d = decisions[std::size_t(l)];
        CHECK(test::relative_error<float>(d.features[std::size_t(h)].view(), features.mat(h)) <= 1e-5);
        std::vector<float> ref_scores;
        for (Index i = 0; i < scores.cols(); ++i) ref_scores.push_back(scores(h, i));
        CHECK(rel(d.scores[std::size_t(h)], ref_scores) <= 1e-5);
        std::vector<Index> ref_kept;
        for (Index i = 0; i < kept.cols(); ++i) ref_kept.push_back(Index(kept(h, i)));
        CHECK(d.kept[std::size_t(h)] == ref_kept);  // exactly the same tokens
        const TokenTable<float>& t = caches[std::size_t(l)].head(h);
        CHECK(test::relative_error<float>(t.column(t.column_id(kHistoryColumn)).middle_cols(0, 16), hist.mat(h)) <= 1e-5);
      }
    }
  }
  CHECK(NammPolicy<float>::updates(state.get()) == 4);
}

TEST_CASE("normalisation statistics collected on a full-cache run match the reference", "[namm][golden]") {
  const Checkpoint f = Checkpoint::open(test::fixture("namm/namm_synthetic.safetensors"));
  StatsCollector collector;
  NammConfig cfg;
  cfg.n_up = 48;
  const auto policy = NammPolicy<float>::collecting(collector, cfg);
  auto state = policy.make_state(2, 2);
  std::vector<LayerCache<float>> caches;
  for (int l = 0; l < 2; ++l) caches.emplace_back(2, 8), policy.attach(caches.back());
  for (Index l = 0; l < 2; ++l) {
    append_tokens(caches[std::size_t(l)], 0, 48);
    feed_update(policy, f, 0, l, caches[std::size_t(l)], state.get());
  }
  std::vector<LayerCache<float>*> ptrs = {&caches[0], &caches[1]};
  policy.update(ptrs, state.get(), 48, nullptr);
  CHECK(caches[0].head(0).size() == 48);  // nothing evicted
  const NormStats ref = stats_from(f);
  CHECK(collector.stats.count == 2 * 2 * 48);
  for (std::size_t b = 0; b < 17; ++b) {
    CHECK(collector.stats.mean[b] == Approx(ref.mean[b]).epsilon(1e-5));
    CHECK(collector.stats.var[b] == Approx(ref.var[b]).epsilon(1e-4));
  }
}

TEST_CASE("NAMM unit cases: recency and STFT and BAM and the selection rule", "[namm][golden]") {
  const Checkpoint f = Checkpoint::open(test::fixture("namm/namm_unit.safetensors"));
  // Recency embedding, including ages beyond the official 32768-entry table.
  const auto r = f.read<std::int64_t>("recency.r");
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < r.numel(); ++i) pos.push_back(-r[i]);
  Tensor<float> emb({r.numel(), 8});
  recency_embedding<float>(pos, 0, 50000.0, emb.view());
  CHECK(test::relative_error<float>(emb.view(), f.read<float>("recency.emb").view()) <= 1e-6);
  // STFT magnitudes of 3 signals, 3 frames each.
  const auto signal = f.read<float>("stft.signal"), mag = f.read<float>("stft.mag");
  SpectrogramTransform<float> stft;
  for (Index s = 0; s < 3; ++s) {
    Tensor<float> frames({3, 32}), work({3, 32}), spec({3, 17});
    for (Index j = 0; j < 3; ++j)
      for (Index t = 0; t < 32; ++t) frames(j, t) = signal(s, 16 * j + t);
    stft.magnitudes(frames.view(), work.view(), spec.view());
    CHECK(test::relative_error<float>(spec.view(), mag.mat(s)) <= 1e-5);
  }
  // BAM on five tokens.
  const BamScorer<float> bam(flat(f.read<float>("bam.theta")));
  std::vector<float> scores(5);
  bam.score(f.read<float>("bam.x").view(), scores);
  CHECK(rel(scores, flat(f.read<float>("bam.scores"))) <= 1e-5);
  // Selection: min over heads; the newest token survives a negative score.
  for (const char* c : {"select.a", "select.b"}) {
    const auto s = f.read<float>(std::string(c) + ".scores");
    const auto k = f.read<std::int64_t>(std::string(c) + ".kept");
    std::vector<std::vector<float>> per_head(static_cast<std::size_t>(s.rows()));
    for (Index h = 0; h < s.rows(); ++h)
      for (Index i = 0; i < s.cols(); ++i) per_head[std::size_t(h)].push_back(s(h, i));
    const auto kept = select_tokens<float>(per_head, 0.f, 1 << 30);
    for (Index h = 0; h < s.rows(); ++h) {
      std::vector<Index> ref;
      for (Index i = 0; i < k.cols(); ++i) ref.push_back(Index(k(h, i)));
      CHECK(kept[std::size_t(h)] == ref);
    }
  }
}

TEST_CASE("selection rule details: threshold and cap and protection", "[namm]") {
  // Head A has 3 negatives, head B 1: one token leaves each head, the lowest of each.
  const std::vector<std::vector<float>> s = {{-3.f, 1.f, -2.f, -1.f, 5.f}, {2.f, 0.f, -0.5f, 3.f, -9.f}};
  const auto k = select_tokens<float>(s, 0.f, 100);
  CHECK(k[0] == std::vector<Index>{1, 2, 3, 4});
  CHECK(k[1] == std::vector<Index>{0, 1, 3, 4});  // the newest (-9) is protected; 0 is not evictable
  const auto capped = select_tokens<float>(s, 0.f, 2);  // top-k cap: 3 leave each head
  CHECK(capped[0] == std::vector<Index>{1, 4});
  CHECK(capped[1] == std::vector<Index>{3, 4});  // -0.5, 0 and 2 leave: the cap overrides the threshold
  const std::vector<std::vector<float>> bad = {{0.f, NAN}};
  CHECK_THROWS_AS(select_tokens<float>(bad, 0.f, 10), Error);
  CHECK_THROWS_AS(select_tokens<float>({{1.f}, {1.f, 2.f}}, 0.f, 10), Error);
}

TEST_CASE("streaming features equal the batched form of the official code", "[namm][invariant]") {
  // One update of N = 64 queries over a cache of 32 old tokens and the 64 new ones, in the batched
  // form: E_new = gamma^N E_old + sum_j (1-a) a^(T-1-j) M(j,k) S_j(k), S from [prev16; A^T].
  // (Updates start at multiples of n_up, so hops are aligned to absolute token indices.)
  const Index old = 32, N = 64, n = old + N, T = N / 16;
  const double gamma = 0.99, a = std::pow(gamma, 16);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> U(0, 1);
  test::Mat A(N, n), prev(n, 16), e_old(n, 17);
  for (Index q = 0; q < N; ++q) {
    double z = 0;
    for (Index k = 0; k < n; ++k) z += A(q, k) = (k < old + q + 1) ? U(rng) : 0.0;
    for (Index k = 0; k < n; ++k) A(q, k) /= z;
  }
  for (Index k = 0; k < old; ++k) {
    for (Index t = 0; t < 16; ++t) prev(k, t) = U(rng) * 0.1;
    for (Index f = 0; f < 17; ++f) e_old(k, f) = U(rng);
  }
  test::Mat ref(n, 17);
  for (Index k = 0; k < n; ++k) {
    std::vector<double> p(16 + N);
    for (Index t = 0; t < 16; ++t) p[std::size_t(t)] = prev(k, t);
    for (Index q = 0; q < N; ++q) p[std::size_t(16 + q)] = A(q, k);
    const Index block = k < old ? 0 : (k - old) / 16;
    for (Index f = 0; f < 17; ++f) {
      double e = k < old ? std::pow(gamma, double(N)) * e_old(k, f) : 0.0;
      for (Index j = block; j < T; ++j) {
        double re = 0, im = 0;
        for (Index t = 0; t < 32; ++t) {
          const double w = 0.5 - 0.5 * std::cos(2 * std::numbers::pi * double(t) / 32);
          re += w * p[std::size_t(16 * j + t)] * std::cos(2 * std::numbers::pi * double(f * t) / 32);
          im -= w * p[std::size_t(16 * j + t)] * std::sin(2 * std::numbers::pi * double(f * t) / 32);
        }
        e += (1 - a) * std::pow(a, double(T - 1 - j)) * std::hypot(re, im);
      }
      ref(k, f) = e;
    }
  }
  // Streaming: the policy's sink, fed one query at a time (as decode does).
  NammConfig cfg;
  cfg.n_up = N;
  const NammPolicy<double> policy(BamScorer<double>(std::vector<double>(4172, 0.0)), NormStats{}, cfg);
  auto state = policy.make_state(1, 1);
  LayerCache<double> cache(1, 4);
  policy.attach(cache);
  Tensor<double> kv({old, 4});
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < old; ++i) pos.push_back(i);
  cache.append(kv.view(), kv.view(), pos);
  TokenTable<double>& t = cache.head(0);
  for (Index k = 0; k < old; ++k) {
    for (Index c = 0; c < 16; ++c) t.column(t.column_id(kHistoryColumn))(k, c) = prev(k, c);
    for (Index c = 0; c < 17; ++c) t.column(t.column_id(kEmaColumn))(k, c) = e_old(k, c);
  }
  for (Index q = 0; q < N; ++q) {
    Tensor<double> one({1, 4});
    const std::vector<std::int64_t> p = {old + q};
    cache.append(one.view(), one.view(), p);
    ProbabilitySink<double>* sink = policy.sink(0, cache, state.get(), StepInfo{1, old + q + 1, nullptr});
    Tensor<double> row({1, old + q + 1});
    for (Index k = 0; k <= old + q; ++k) row(0, k) = A(q, k);
    sink->consume(0, 0, 0, row.view());
    sink->rows_done(0, 0, 1);
  }
  test::require_close<double>(t.column(t.column_id(kEmaColumn)), ref, 1e-12, "streaming EMA");
}

TEST_CASE("NAMM eviction keeps keys and values and positions and NAMM columns in lockstep", "[namm][invariant]") {
  // Rows are tagged with their position in every column; after an update each kept row must still
  // carry one tag everywhere.
  std::mt19937 rng(5);
  std::normal_distribution<float> N(0.f, 0.3f);
  std::vector<float> theta(4172);
  for (auto& x : theta) x = N(rng);
  NammConfig cfg;
  cfg.n_up = 32;
  const NammPolicy<float> policy(BamScorer<float>(theta), NormStats{{}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 1}, cfg);
  auto state = policy.make_state(1, 3);
  LayerCache<float> cache(3, 16);
  policy.attach(cache);
  const Index n = 200;
  Tensor<float> k({n, 48}), v({n, 48});
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < n; ++i) {
    pos.push_back(1000 + 3 * i);
    for (Index c = 0; c < 48; ++c) k(i, c) = float(i), v(i, c) = -float(i);
  }
  cache.append(k.view(), v.view(), pos);
  for (Index h = 0; h < 3; ++h) {
    TokenTable<float>& t = cache.head(h);
    for (Index i = 0; i < n; ++i) {
      for (Index c = 0; c < 17; ++c) t.column(t.column_id(kEmaColumn))(i, c) = N(rng) + float(i % 7);
      for (Index c = 0; c < 32; ++c) t.column(t.column_id(kHistoryColumn))(i, c) = float(i) + 0.25f;
    }
  }
  std::vector<std::vector<float>> ema_before;
  for (Index h = 0; h < 3; ++h) {
    const auto e = cache.head(h).column(cache.head(h).column_id(kEmaColumn));
    ema_before.emplace_back();
    for (Index i = 0; i < n; ++i) ema_before.back().push_back(e(i, 0));
  }
  std::vector<LayerCache<float>*> ptrs = {&cache};
  policy.update(ptrs, state.get(), 2048, nullptr);
  const Index kept = cache.head(0).size();
  CHECK(kept < n);  // something was evicted
  CHECK(kept > 0);
  for (Index h = 0; h < 3; ++h) {
    const TokenTable<float>& t = cache.head(h);
    CHECK(t.size() == kept);  // every head of a layer keeps the same count
    CHECK(t.position(t.size() - 1) == pos.back());  // newest protected
    for (Index i = 0; i < t.size(); ++i) {
      const Index tag = Index(t.keys()(i, 0));
      CHECK(t.values()(i, 15) == -float(tag));
      CHECK(t.position(i) == 1000 + 3 * tag);
      CHECK(t.column(t.column_id(kHistoryColumn))(i, 31) == float(tag) + 0.25f);
      CHECK(t.column(t.column_id(kEmaColumn))(i, 0) == ema_before[std::size_t(h)][std::size_t(tag)]);
      if (i > 0) CHECK(t.keys()(i - 1, 0) < t.keys()(i, 0));  // cache order preserved
    }
  }
}

TEST_CASE("NAMM weights files round-trip and reject malformed ones", "[namm][errors]") {
  test::TempDir dir;
  NammWeights<float> w;
  w.theta = Tensor<float>({4172});
  for (Index i = 0; i < 4172; ++i) w.theta[i] = float(i % 13) * 0.01f;
  for (std::size_t b = 0; b < 17; ++b) w.stats.mean[b] = double(b), w.stats.var[b] = 1.0 + double(b);
  w.config.n_up = 256;
  const auto path = (dir.path() / "namm.safetensors").string();
  save_namm(path, w);
  const auto r = load_namm<float>(path);
  CHECK(r.theta[4171] == w.theta[4171]);
  CHECK(r.stats.var[16] == 17.0);
  CHECK(r.config.n_up == 256);
  CHECK_NOTHROW(r.policy());
  safetensors::Writer bad;
  bad.add("theta", Tensor<float>({100}));
  bad.write(path);
  CHECK_THROWS_AS(load_namm<float>(path), Error);
  std::vector<float> nan_theta(4172, 0.f);
  nan_theta[7] = NAN;
  CHECK_THROWS_AS(BamScorer<float>(nan_theta), Error);
  NammConfig c;
  c.n_up = 100;  // not a multiple of the hop
  CHECK_THROWS_AS(NammPolicy<float>(BamScorer<float>(std::vector<float>(4172)), NormStats{}, c), Error);
}
