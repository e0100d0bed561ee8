// engram-namm-evolve: evolves NAMM weights with CMA-ES against a fitness the library computes by
// itself: how faithfully a model with the evicting cache reproduces its own full-cache next-token
// distributions, rewarded for the memory it frees. Writes progress, a CSV fitness curve and the
// weights (usable with engram-namm --namm-weights).
#include <chrono>
#include <cmath>
#include <fstream>

#include "example_util.hpp"

using namespace engram;

namespace {
const char* kUsage =
    "usage: engram-namm-evolve [options]\n"
    "  --generations G    CMA-ES generations (default 20)\n"
    "  --population P     lambda (default 32, the official setting)\n"
    "  --sigma S          initial step size (default 0.065, the official setting)\n"
    "  --docs D           training documents (default 2)\n"
    "  --length N         tokens per document (default 768)\n"
    "  --n-up N           NAMM update interval (default 128)\n"
    "  --memory-weight W  reward per unit of cache freed, against the KL penalty (default 0.1)\n"
    "  --model DIR        Hugging Face model directory (default: a random byte-level model)\n"
    "  --corpus PATH      background text (default Debian's fortunes)\n"
    "  --out F            weights file written at the end (default namm_evolved.safetensors)\n"
    "  --csv F            fitness curve (default namm_evolve.csv)\n"
    "  --checkpoint F     optimiser state saved every generation; resumed from when it exists\n"
    "  --seed S           (default 1)\n";

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
  examples::Args args(argc, argv,
                      {{"generations", "20"}, {"population", "32"}, {"sigma", "0.065"}, {"docs", "2"}, {"length", "768"},
                       {"n-up", "128"}, {"memory-weight", "0.1"}, {"model", ""}, {"corpus", ""},
                       {"out", "namm_evolved.safetensors"}, {"csv", "namm_evolve.csv"}, {"checkpoint", ""}, {"seed", "1"}},
                      kUsage);
  try {
    const auto model = examples::load_or_default(args.str("model"));
    const Index n_docs = args.integer("docs"), length = args.integer("length");
    namm::NammConfig cfg;
    cfg.n_up = args.integer("n-up");
    cfg.validate();
    check(length > cfg.n_up, "--length", "documents must be longer than n_up (", cfg.n_up, ")");
    std::vector<std::vector<std::int32_t>> docs;
    for (Index d = 0; d < n_docs; ++d) docs.push_back(examples::babi_document(length, std::uint64_t(100 + d), args.str("corpus")).tokens);

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
    const double memory_weight = args.number("memory-weight");
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
    o.lambda = args.integer("population");
    o.sigma0 = args.number("sigma");
    o.seed = std::uint64_t(args.integer("seed"));
    const std::string ckpt = args.str("checkpoint");
    Cmaes es = (!ckpt.empty() && std::filesystem::exists(ckpt)) ? Cmaes::load(ckpt) : Cmaes(o);
    if (es.generation() > 0) std::printf("resumed from %s at generation %td\n", ckpt.c_str(), es.generation());
    std::ofstream csv(args.str("csv"), es.generation() > 0 ? std::ios::app : std::ios::trunc);
    if (es.generation() == 0) csv << "generation,best,mean,sigma,mean_kept_fraction,seconds\n";
    std::printf("evolving %td NAMM parameters: lambda %td, sigma0 %.3f, %td documents of %td tokens, n_up %td\n", o.dim,
                o.lambda, o.sigma0, n_docs, length, cfg.n_up);
    std::printf("%5s %12s %12s %10s %10s %8s\n", "gen", "best", "mean", "sigma", "kept(mean)", "s");
    const Index generations = args.integer("generations");
    while (es.generation() < generations) {
      const auto t0 = std::chrono::steady_clock::now();
      const Eigen::MatrixXd x = es.ask();
      std::vector<double> fitness(static_cast<std::size_t>(x.cols())), kept(static_cast<std::size_t>(x.cols()));
      parallel_for_dynamic(0, x.cols(), [&](Index i) { fitness[std::size_t(i)] = evaluate(x.col(i), &kept[std::size_t(i)]); });
      es.tell(fitness);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double mean = 0, kept_mean = 0;
      for (std::size_t i = 0; i < fitness.size(); ++i) mean += fitness[i] / double(fitness.size()), kept_mean += kept[i] / double(kept.size());
      const double best = *std::max_element(fitness.begin(), fitness.end());
      std::printf("%5td %12.5f %12.5f %10.5f %10.3f %8.1f\n", es.generation(), best, mean, es.sigma(), kept_mean, secs);
      std::fflush(stdout);
      csv << es.generation() << ',' << best << ',' << mean << ',' << es.sigma() << ',' << kept_mean << ',' << secs << '\n';
      csv.flush();
      if (!ckpt.empty()) es.save(ckpt);
    }
    // The paper evaluates the CMA-ES mean, not the best sample.
    double kept = 0;
    const double f = evaluate(es.mean(), &kept);
    namm::NammWeights<float> w;
    w.theta = Tensor<float>({o.dim});
    for (Index i = 0; i < o.dim; ++i) w.theta[i] = float(es.mean()(i));
    w.stats = stats;
    w.config = cfg;
    namm::save_namm(args.str("out"), w);
    std::printf("mean of the search distribution: fitness %.5f, kept %.1f%% of the cache; weights -> %s, curve -> %s\n", f,
                100 * kept, args.str("out").c_str(), args.str("csv").c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
