// Eviction policies: each baseline's rule pinned on a hand-built attention pattern; policies inside a
// decoder (budgets respected, heads in lockstep, NAMM with a zero scorer changes nothing); CMA-ES
// against the independent reference, resume from a checkpoint, and convergence.
#include "engram/io/hf.hpp"
#include "engram/namm/baselines.hpp"
#include "engram/namm/cmaes.hpp"
#include "engram/namm/policy.hpp"
#include "test_util.hpp"

using namespace engram;
using namespace engram::namm;

namespace {

// One layer, `heads` KV heads of width 4, n tokens at positions 0..n-1; key row i = (i + 1) * key_scale[i].
LayerCache<float> make_cache(const CachePolicy<float>& p, Index heads, Index n, const std::vector<float>& key_norms = {}) {
  LayerCache<float> c(heads, 4);
  p.attach(c);
  Tensor<float> k({n, heads * 4}), v({n, heads * 4});
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < n; ++i) {
    pos.push_back(i);
    for (Index e = 0; e < heads * 4; ++e) k(i, e) = key_norms.empty() ? 1.f : key_norms[std::size_t(i)] * 0.5f, v(i, e) = float(i);
  }
  c.append(k.view(), v.view(), pos);
  return c;
}

// Runs one step's policy hooks with a hand-built probability matrix [queries, n] for every head.
void step(const CachePolicy<float>& p, LayerCache<float>& c, PolicyState* st, const Tensor<float>& probs, Index tokens_seen) {
  const StepInfo info{probs.rows(), tokens_seen, nullptr};
  if (p.needs_attention())
    if (ProbabilitySink<float>* sink = p.sink(0, c, st, info))
      for (Index h = 0; h < c.n_heads(); ++h) sink->consume(h, 0, 0, probs.view()), sink->rows_done(h, 0, probs.rows());
  p.after_layer(0, c, st, info);
}

std::vector<Index> kept_positions(const LayerCache<float>& c, Index head = 0) {
  std::vector<Index> p;
  for (Index i = 0; i < c.head(head).size(); ++i) p.push_back(Index(c.head(head).position(i)));
  return p;
}

Tensor<float> attention_rows(const std::vector<std::vector<float>>& rows) {
  Tensor<float> t({Index(rows.size()), Index(rows[0].size())});
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t j = 0; j < rows[r].size(); ++j) t(Index(r), Index(j)) = rows[r][j];
  return t;
}

}  // namespace

TEST_CASE("H2O keeps the recent half of the budget and the heaviest accumulated hitters", "[namm][baselines]") {
  const H2OPolicy<float> p(Budget::of_tokens(4));
  auto st = p.make_state(1, 1);
  auto c = make_cache(p, 1, 8);
  // Token 1 is a heavy hitter over two queries, token 5 over one; recent = tokens 6 and 7.
  step(p, c, st.get(), attention_rows({{0.f, .6f, 0.f, .1f, 0.f, .1f, .1f, .1f}, {0.f, .3f, .1f, 0.f, 0.f, .5f, 0.f, .1f}}), 8);
  CHECK(kept_positions(c) == std::vector<Index>{1, 5, 6, 7});
}

TEST_CASE("KNorm keeps the keys with the lowest L2 norm", "[namm][baselines]") {
  const KNormPolicy<float> p(Budget::of_tokens(3));
  auto st = p.make_state(1, 2);
  auto c = make_cache(p, 2, 6, {5.f, 1.f, 4.f, 0.5f, 3.f, 2.f});
  step(p, c, st.get(), Tensor<float>({1, 6}), 6);
  CHECK(kept_positions(c, 0) == std::vector<Index>{1, 3, 5});
  CHECK(kept_positions(c, 1) == std::vector<Index>{1, 3, 5});
  CHECK_FALSE(p.needs_attention());
}

TEST_CASE("StreamingLLM keeps the sink tokens and the recent window", "[namm][baselines]") {
  const StreamingPolicy<float> p(Budget::of_tokens(5), 2);
  auto st = p.make_state(1, 1);
  auto c = make_cache(p, 1, 10);
  step(p, c, st.get(), Tensor<float>({1, 10}), 10);
  CHECK(kept_positions(c) == std::vector<Index>{0, 1, 7, 8, 9});
}

TEST_CASE("SnapKV scores the prefix by the observation window with pooling", "[namm][baselines]") {
  const SnapKVPolicy<float> p(Budget::of_tokens(4), 2, 1);  // window of 2 queries, no pooling
  auto st = p.make_state(1, 1);
  auto c = make_cache(p, 1, 8);
  // 8-token prompt: queries 0..5 (ignored) and the window 6, 7 which attend to prefix tokens 2 and 4.
  std::vector<std::vector<float>> rows(8, std::vector<float>(8, 0.f));
  for (int q = 0; q < 6; ++q) rows[std::size_t(q)][0] = 1.f;  // outside the window: must not count
  rows[6][2] = .7f, rows[6][4] = .2f, rows[6][6] = .1f;
  rows[7][2] = .3f, rows[7][4] = .6f, rows[7][7] = .1f;
  step(p, c, st.get(), attention_rows(rows), 8);
  CHECK(kept_positions(c) == std::vector<Index>{2, 4, 6, 7});
  // A decode step does not compress and asks for no probabilities.
  CHECK(p.sink(0, c, st.get(), StepInfo{1, 9, nullptr}) == nullptr);
  // Pooling spreads attention to neighbours: with kernel 3, token 3 (between 2 and 4) wins over 0.
  const SnapKVPolicy<float> pooled(Budget::of_tokens(3), 2, 3);
  auto st2 = pooled.make_state(1, 1);
  auto c2 = make_cache(pooled, 1, 8);
  step(pooled, c2, st2.get(), attention_rows(rows), 8);
  CHECK(kept_positions(c2) == std::vector<Index>{3, 6, 7});
}

TEST_CASE("TOVA drops what the last query attends to least and keeps heads identical", "[namm][baselines]") {
  const TovaPolicy<float> p(Budget::of_tokens(3));
  auto st = p.make_state(1, 2);
  auto c = make_cache(p, 2, 5);
  // Only the last query counts: it attends to tokens 0, 3, 4.
  step(p, c, st.get(), attention_rows({{.9f, .1f, 0.f, 0.f, 0.f}, {.5f, .05f, .05f, .2f, .2f}}), 5);
  CHECK(kept_positions(c, 0) == std::vector<Index>{0, 3, 4});
  CHECK(kept_positions(c, 1) == std::vector<Index>{0, 3, 4});
}

TEST_CASE("Recency keeps the last tokens and ratio budgets follow the tokens seen", "[namm][baselines]") {
  const RecencyPolicy<float> p(Budget::of_ratio(0.25));
  auto st = p.make_state(1, 1);
  auto c = make_cache(p, 1, 12);
  step(p, c, st.get(), Tensor<float>({1, 12}), 12);
  CHECK(kept_positions(c) == std::vector<Index>{9, 10, 11});
  CHECK(Budget::of_ratio(0.25).allowed(100) == 25);
  CHECK_THROWS_AS(Budget::of_ratio(1.5), Error);
  CHECK_THROWS_AS(Budget::of_tokens(0), Error);
  CHECK_THROWS_AS(RecencyPolicy<float>(Budget::none()), Error);
}

TEST_CASE("policies inside a decoder: budgets hold and layer heads stay aligned", "[namm][decoder]") {
  const auto m = hf::load_decoder<float>(test::fixture("llama_tiny"));
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 100; ++i) tokens.push_back(std::int32_t((i * 17 + 3) % 67));
  const H2OPolicy<float> h2o(Budget::of_tokens(24));
  const KNormPolicy<float> knorm(Budget::of_tokens(24));
  const StreamingPolicy<float> streaming(Budget::of_tokens(24));
  const SnapKVPolicy<float> snap(Budget::of_tokens(24), 8);
  const TovaPolicy<float> tova(Budget::of_tokens(24));
  const RecencyPolicy<float> recency(Budget::of_tokens(24));
  for (const CachePolicy<float>* p : std::initializer_list<const CachePolicy<float>*>{&h2o, &knorm, &streaming, &snap, &tova, &recency}) {
    INFO(p->name());
    auto s = m.make_state(p);
    m.prefill(std::span(tokens).subspan(0, 60), s, {.chunk = 16});
    for (int i = 60; i < 100; ++i) m.decode(tokens[std::size_t(i)], s);
    for (LayerCache<float>* c : s.caches()) {
      CHECK(c->max_size() <= (p == &snap ? 24 + 40 : 24));  // SnapKV compresses the prompt only
      for (Index h = 0; h < c->n_heads(); ++h) CHECK(c->head(h).position(c->head(h).size() - 1) == 99);
    }
    CHECK(s.position() == 100);
  }
}

TEST_CASE("NAMM inside a decoder: a zero scorer evicts nothing and changes no logit", "[namm][decoder]") {
  const auto m = hf::load_decoder<float>(test::fixture("llama_tiny"));
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 100; ++i) tokens.push_back(std::int32_t((i * 29 + 5) % 67));
  NammConfig cfg;
  cfg.n_up = 32;
  NormStats unit;
  unit.var.fill(1.0);
  const NammPolicy<float> zero(BamScorer<float>(std::vector<float>(4172, 0.f)), unit, cfg);
  auto s = m.make_state(&zero);
  auto plain = m.make_state();
  const auto with = m.prefill(tokens, s, {.all_logits = true});
  const auto without = m.prefill(tokens, plain, {.all_logits = true});
  CHECK(test::relative_error<float>(with.view(), without.view()) <= 1e-5);
  CHECK(NammPolicy<float>::updates(s.policy_state()) == 3);
  CHECK(s.caches()[0]->head(0).size() == 100);
  // A random scorer evicts, every n_up tokens, the same count from every head of a layer.
  std::mt19937 rng(11);
  std::normal_distribution<float> N(0.f, 0.5f);
  std::vector<float> theta(4172);
  for (auto& x : theta) x = N(rng);
  theta[4171] = -10.5f;  // b_s: centres the scores of this theta so that some are negative
  const NammPolicy<float> random(BamScorer<float>(theta), unit, cfg);
  auto r = m.make_state(&random);
  m.prefill(std::span(tokens).subspan(0, 64), r);
  for (int i = 64; i < 100; ++i) m.decode(tokens[std::size_t(i)], r);
  CHECK(NammPolicy<float>::updates(r.policy_state()) == 3);
  for (LayerCache<float>* c : r.caches()) {
    CHECK(c->max_size() < 100);
    for (Index h = 1; h < c->n_heads(); ++h) CHECK(c->head(h).size() == c->head(0).size());
  }
  CHECK(r.flops[FlopCategory::namm_features] > 0);
  CHECK(r.flops[FlopCategory::namm_scorer] > 0);
  CHECK(r.bytes() < s.bytes());  // evicted memory is returned
}

TEST_CASE("CMA-ES matches the independent reference generation by generation", "[namm][cmaes][golden]") {
  const Checkpoint f = Checkpoint::open(test::fixture("namm/cmaes.safetensors"));
  auto scalar = [&](const std::string& name) { return double(f.read<float>(name)[0]); };
  const CmaesConstants small(6, 8), big(4172, 32);
  for (const auto& [k, prefix] : {std::pair{&small, std::string()}, std::pair{&big, std::string("big.")}}) {
    CHECK(k->mu_eff == Approx(scalar(prefix + "mu_eff")).epsilon(1e-6));
    CHECK(k->c_sigma == Approx(scalar(prefix + "c_sigma")).epsilon(1e-6));
    CHECK(k->d_sigma == Approx(scalar(prefix + "d_sigma")).epsilon(1e-6));
    CHECK(k->c_c == Approx(scalar(prefix + "c_c")).epsilon(1e-6));
    CHECK(k->c_1 == Approx(scalar(prefix + "c_1")).epsilon(1e-6));
    CHECK(k->c_mu == Approx(scalar(prefix + "c_mu")).epsilon(1e-6));
    CHECK(k->chi_n == Approx(scalar(prefix + "chi_n")).epsilon(1e-6));
    const auto w = f.read<float>(prefix + "weights");
    for (Index i = 0; i < w.numel(); ++i) CHECK(k->weights[std::size_t(i)] == Approx(w[i]).epsilon(1e-5).margin(1e-7));
  }
  CmaesOptions o;
  o.dim = 6;
  o.lambda = 8;
  o.sigma0 = 0.3;
  o.eigen_interval = 1;
  Cmaes es(o);
  for (int g = 0; g < 4; ++g) {
    const std::string s = ".g" + std::to_string(g);
    const auto z = f.read<double>("z" + s), xr = f.read<double>("x" + s);
    Eigen::MatrixXd zm(6, 8);
    for (Index i = 0; i < 8; ++i)
      for (Index j = 0; j < 6; ++j) zm(j, i) = z(i, j);
    const Eigen::MatrixXd x = es.ask_with(zm);
    for (Index i = 0; i < 8; ++i)
      for (Index j = 0; j < 6; ++j) CHECK(x(j, i) == Approx(xr(i, j)).epsilon(1e-5).margin(1e-6));
    const auto fit = f.read<double>("fitness" + s);
    es.tell(std::vector<double>(fit.data(), fit.data() + 8));
    INFO("generation " << g);
    const auto mean = f.read<double>("mean" + s), ps = f.read<double>("p_sigma" + s), pc = f.read<double>("p_c" + s);
    for (Index i = 0; i < 6; ++i) {
      CHECK(es.mean()(i) == Approx(mean[i]).epsilon(1e-5).margin(1e-6));
      CHECK(es.p_sigma()(i) == Approx(ps[i]).epsilon(1e-5).margin(1e-6));
      CHECK(es.p_c()(i) == Approx(pc[i]).epsilon(1e-5).margin(1e-6));
    }
    CHECK(es.sigma() == Approx(scalar("sigma" + s)).epsilon(1e-5));
    const auto C = f.read<double>("C" + s);
    for (Index i = 0; i < 6; ++i)
      for (Index j = 0; j < 6; ++j) CHECK(es.covariance()(i, j) == Approx(C(i, j)).epsilon(1e-5).margin(1e-6));
  }
}

TEST_CASE("CMA-ES resumes from a checkpoint exactly and solves a sphere in parallel", "[namm][cmaes]") {
  const auto sphere = [](const Eigen::VectorXd& x) { return -(x.array() - 0.3).square().sum(); };
  CmaesOptions o;
  o.dim = 10;
  o.lambda = 12;
  o.sigma0 = 0.5;
  o.seed = 42;
  Cmaes straight(o);
  straight.run(8, sphere);
  Cmaes first(o);
  first.run(5, sphere);
  test::TempDir dir;
  const std::string path = (dir.path() / "es.safetensors").string();
  first.save(path);
  Cmaes resumed = Cmaes::load(path);
  CHECK(resumed.generation() == 5);
  resumed.run(3, sphere);
  for (Index i = 0; i < 10; ++i) CHECK(resumed.mean()(i) == straight.mean()(i));
  CHECK(resumed.sigma() == straight.sigma());
  // Convergence: 150 generations bring the mean close to the optimum.
  Cmaes es(o);
  std::vector<double> curve;
  es.run(150, sphere, [&](const Cmaes::Progress& p) { curve.push_back(p.best); });
  CHECK(curve.size() == 150);
  CHECK(curve.back() > -1e-3);
  CHECK((es.mean().array() - 0.3).abs().maxCoeff() < 0.05);
  CHECK_THROWS_AS(es.tell(std::vector<double>(12, 0.0)), Error);  // tell without ask
  (void)es.ask();
  CHECK_THROWS_AS(es.tell(std::vector<double>(11, 0.0)), Error);
  std::ofstream(path) << "not a checkpoint";
  CHECK_THROWS_AS(Cmaes::load(path), Error);
}
