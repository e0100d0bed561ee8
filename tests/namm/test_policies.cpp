// NAMM as a cache policy inside a decoder (a zero scorer changes nothing, a random one evicts the
// same count from every head of a layer); CMA-ES against the independent reference, resume from a
// checkpoint, and convergence. The baselines' tests are in tests/policies.
#include "engram/io/hf.hpp"
#include "engram/namm/cmaes.hpp"
#include "engram/namm/policy.hpp"
#include "test_util.hpp"

using namespace engram;
using namespace engram::namm;

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
