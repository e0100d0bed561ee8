// engram-namm-evolve: evolves NAMM weights with CMA-ES against a fitness the library computes by
// itself: how faithfully a model with the evicting cache reproduces its own full-cache next-token
// distributions, rewarded for the memory it frees. Writes progress, a CSV fitness curve and the
// weights (usable with engram-namm --namm-weights).
#include <chrono>
#include <cmath>
#include <fstream>

#include "engram/namm/distributed.hpp"
#include "example_util.hpp"
#include "ranks.hpp"

using namespace engram;

namespace {
// log-softmax of a row.
std::vector<double> log_softmax(const float* x, Index n) {
  double m = -INFINITY, s = 0;
  for (Index i = 0; i < n; ++i) m = std::max(m, double(x[i]));
  for (Index i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
  std::vector<double> out(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) out[std::size_t(i)] = double(x[i]) - m - std::log(s);
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  Index generations = 20, population = 32, n_docs = 2, length = 768, n_up = 128;
  double sigma = 0.065, memory_weight = 0.1;
  std::string model_dir, corpus, out = "namm_evolved.safetensors", csv_path = "namm_evolve.csv", ckpt;
  examples::Ranks ranks(argc, argv);  // under mpirun, the population is evaluated across the MPI ranks
  return ranks.finish(cli::run(
      argc, argv,
      "engram-namm-evolve: evolves NAMM weights with CMA-ES against a fitness the library computes by itself (fidelity of "
      "next-token distributions to the full cache, plus a reward for the memory freed); writes a CSV fitness curve and the "
      "weights (usable with engram-namm --namm-weights).",
      [&](CLI::App& app) {
        app.add_option("--generations", generations, "CMA-ES generations")->check(CLI::Range(Index(0), Index(1) << 20));
        app.add_option("--population", population, "lambda (32 is the official setting)")->check(CLI::Range(Index(2), Index(1) << 16));
        app.add_option("--sigma", sigma, "initial step size (0.065 is the official setting)")->check(cli::range(1e-12, 1e6));
        app.add_option("--docs", n_docs, "training documents")->check(CLI::Range(Index(1), Index(1) << 16));
        app.add_option("--length", length, "tokens per document (more than --n-up)")->check(CLI::Range(Index(1), Index(1) << 24));
        app.add_option("--n-up", n_up, "NAMM update interval, a multiple of 16")
            ->check(CLI::Range(Index(16), Index(1) << 20))
            ->check(cli::checked_by("INT", [](const std::string& t) {
              namm::NammConfig c;
              c.n_up = std::stol(t);
              c.validate();
            }));
        app.add_option("--memory-weight", memory_weight, "reward per unit of cache freed, against the KL penalty")->check(cli::range(-1e6, 1e6));
        app.add_option("--model", model_dir, "Hugging Face model directory (default: a random byte-level model)")->check(CLI::ExistingDirectory);
        app.add_option("--corpus", corpus, "background text: a file or a directory (default: Debian's fortunes)")->check(cli::regular_file(/*allow_directory=*/true));
        app.add_option("--out", out, "weights file written at the end")->check(cli::output_file());
        app.add_option("--csv", csv_path, "fitness curve")->check(cli::output_file());
        app.add_option("--checkpoint", ckpt, "optimiser state saved every generation; resumed from when it exists")
            ->check(cli::output_file());
        app.get_option("--seed")->description("seed of CMA-ES sampling");
      },
      [&] {
        namm::NammConfig cfg;
        cfg.n_up = n_up;
        cfg.validate();
        if (length <= cfg.n_up) cli::usage_error("--length", "documents must be longer than --n-up (" + std::to_string(cfg.n_up) + "), got " + std::to_string(length));
        const auto model = examples::load_or_default(model_dir);
        std::vector<std::vector<std::int32_t>> docs;
        for (Index d = 0; d < n_docs; ++d) docs.push_back(examples::babi_document(length, std::uint64_t(100 + d), corpus, "--length").tokens);

        // Reference: full-cache log-probabilities of every position after the first update.
        std::vector<Tensor<float>> reference;
        for (const auto& doc : docs) {
          auto s = model.make_state();
          reference.push_back(model.prefill(doc, s, {.all_logits = true}));
        }
        // Frozen normalisation statistics from a full-cache run (the official procedure).
        namm::StatsCollector collector;
        {
          const auto collect = namm::NammPolicy<float>::collecting(collector, cfg);
          for (const auto& doc : docs) {
            auto s = model.make_state(&collect);
            model.prefill(doc, s);
          }
        }
        const namm::NormStats stats = collector.stats;

        // Fitness: -mean KL(full || namm) over scored positions + memory_weight * (1 - kept fraction).
        auto evaluate = [&](const Eigen::VectorXd& theta, double* kept_out) {
          std::vector<float> t(static_cast<std::size_t>(theta.size()));
          for (Index i = 0; i < theta.size(); ++i) t[std::size_t(i)] = float(theta(i));
          const namm::NammPolicy<float> policy(namm::BamScorer<float>(t), stats, cfg);
          double kl = 0, kept = 0;
          Index scored = 0;
          for (std::size_t d = 0; d < docs.size(); ++d) {
            auto s = model.make_state(&policy);
            const auto logits = model.prefill(docs[d], s, {.all_logits = true});
            for (Index p = cfg.n_up; p < logits.rows(); ++p) {
              const auto lp = log_softmax(reference[d].row(p), logits.cols()), lq = log_softmax(logits.row(p), logits.cols());
              for (Index v = 0; v < logits.cols(); ++v) kl += std::exp(lp[std::size_t(v)]) * (lp[std::size_t(v)] - lq[std::size_t(v)]);
              ++scored;
            }
            double frac = 0;
            for (auto* c : s.caches()) frac += double(c->max_size()) / double(s.position());
            kept += frac / double(s.caches().size());
          }
          kept /= double(docs.size());
          if (kept_out) *kept_out = kept;
          return -kl / double(scored) + memory_weight * (1.0 - kept);
        };

        CmaesOptions o;
        o.dim = namm::BamScorer<float>::kParams;
        o.lambda = population;
        o.sigma0 = sigma;
        o.seed = cli::seed();
        // Every rank holds the same optimiser: each reads the checkpoint, rank 0 alone writes it.
        train::Collective* const c = ranks.collective();
        Cmaes es(o);
        train::all_or_none(c, [&] {
          if (!ckpt.empty() && std::filesystem::exists(ckpt)) es = Cmaes::load(ckpt);
        });
        if (c) train::check_same(*c, namm::fingerprint(es), "the CMA-ES state to start from (every rank must see the same --checkpoint)");
        std::ofstream csv;
        train::all_or_none(c, [&] {
          if (!ranks.root()) return;
          if (es.generation() > 0) std::printf("resumed from %s at generation %td\n", ckpt.c_str(), es.generation());
          csv.open(csv_path, es.generation() > 0 ? std::ios::app : std::ios::trunc);
          check(bool(csv), csv_path, "cannot open for writing");
          if (es.generation() == 0) csv << "generation,best,mean,sigma,mean_kept_fraction,seconds\n";
          std::printf("evolving %td NAMM parameters: lambda %td, sigma0 %.3f, %td documents of %td tokens, n_up %td\n", o.dim,
                      o.lambda, o.sigma0, n_docs, length, cfg.n_up);
          if (c) std::printf("population evaluated across %s: candidate i on rank i %% %d\n", ranks.describe().c_str(), ranks.size());
          std::printf("%5s %12s %12s %10s %10s %8s\n", "gen", "best", "mean", "sigma", "kept(mean)", "s");
        });
        while (es.generation() < generations) {
          const auto t0 = std::chrono::steady_clock::now();
          const namm::Generation g = namm::generation(es, c, 2, [&](const Eigen::VectorXd& x, double* v) { v[0] = evaluate(x, &v[1]); });
          std::vector<double> fitness(static_cast<std::size_t>(g.x.cols())), kept(static_cast<std::size_t>(g.x.cols()));
          for (Index i = 0; i < g.x.cols(); ++i) fitness[std::size_t(i)] = g.fitness(i), kept[std::size_t(i)] = g.value(i, 1);
          const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          double mean = 0, kept_mean = 0;
          for (std::size_t i = 0; i < fitness.size(); ++i) mean += fitness[i] / double(fitness.size()), kept_mean += kept[i] / double(kept.size());
          const double best = *std::max_element(fitness.begin(), fitness.end());
          train::all_or_none(c, [&] {
            if (!ranks.root()) return;
            std::printf("%5td %12.5f %12.5f %10.5f %10.3f %8.1f\n", es.generation(), best, mean, es.sigma(), kept_mean, secs);
            std::fflush(stdout);
            csv << es.generation() << ',' << best << ',' << mean << ',' << es.sigma() << ',' << kept_mean << ',' << secs << '\n';
            csv.flush();
            if (!ckpt.empty()) es.save(ckpt);
          });
        }
        if (!ranks.root()) return 0;  // rank 0 evaluates the mean and writes the weights
        // The paper evaluates the CMA-ES mean, not the best sample.
        double kept = 0;
        const double f = evaluate(es.mean(), &kept);
        namm::NammWeights<float> w;
        w.theta = Tensor<float>({o.dim});
        for (Index i = 0; i < o.dim; ++i) w.theta[i] = float(es.mean()(i));
        w.stats = stats;
        w.config = cfg;
        namm::save_namm(out, w);
        std::printf("mean of the search distribution: fitness %.5f, kept %.1f%% of the cache; weights -> %s, curve -> %s\n", f,
                    100 * kept, out.c_str(), csv_path.c_str());
        return 0;
      }));
}
