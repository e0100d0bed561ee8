// engram-namm-evolve: evolves NAMM weights with CMA-ES on a trained host model. The default fitness
// is the official one (namm.md 7): the host's score on memory-task samples read with the evicting
// cache, normalised by the full cache's score on the same samples, fresh samples every generation,
// incremental stages of tasks; the CMA-ES mean is scored on held-out samples as it evolves. The
// other fitness (--fitness kl) is the fidelity of the next-token distributions to the full cache's,
// rewarded for the memory freed. Writes progress, CSV + SVG curves and the weights (usable with
// engram-namm, engram-generate and engram-eval --namm-weights).
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "engram/eval/namm_fitness.hpp"
#include "engram/io/svg.hpp"
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

// "a,b,c" -> {"a", "b", "c"}; an empty item is a usage error of `option`.
std::vector<std::string> split_list(const std::string& text, const std::string& option) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty()) cli::usage_error(option, "empty item in \"" + text + "\"");
    out.push_back(item);
  }
  if (out.empty()) cli::usage_error(option, "nothing given");
  return out;
}

tasks::Task task_named(const std::string& name) {
  for (tasks::Task t : {tasks::Task::fact_memorization, tasks::Task::fact_detection, tasks::Task::reasoning})
    if (tasks::name(t) == name) return t;
  cli::usage_error("--task", "unknown task \"" + name + "\" (expected fact_memorization, fact_detection or reasoning)");
}

// One line of the curve (the CSV's columns).
struct Row {
  Index generation = 0, stage = 0;
  double best = 0, mean = 0, sigma = 0, kept = 0, held_out = NAN, held_lo = NAN, held_hi = NAN, held_log_prob = NAN, held_kept = NAN, seconds = 0;
};
constexpr const char* kCsvHeader =
    "generation,stage,best,mean,sigma,mean_kept_fraction,held_out_accuracy,held_out_ci_low,held_out_ci_high,held_out_answer_log_prob,"
    "held_out_kept_fraction,seconds";

std::vector<Row> read_rows(const std::string& path) {
  std::vector<Row> rows;
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line) || line != kCsvHeader) return rows;
  while (std::getline(f, line)) {
    std::vector<double> v;
    std::stringstream in(line);
    for (std::string cell; std::getline(in, cell, ',');) v.push_back(std::strtod(cell.c_str(), nullptr));
    if (v.size() != 12) continue;
    rows.push_back({Index(v[0]), Index(v[1]), v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]});
  }
  return rows;
}

void write_charts(const std::string& csv_path, const std::vector<Row>& rows, double full_accuracy) {
  const std::string stem = csv_path.size() > 4 && csv_path.ends_with(".csv") ? csv_path.substr(0, csv_path.size() - 4) : csv_path;
  svg::Series best{"best member", svg::palette(0), true, {}}, mean{"population mean", svg::palette(0), false, {}};
  svg::Series held{"CMA-ES mean, held-out samples", svg::palette(1), false, {}}, full{"full cache, held-out samples of every stage's tasks", "#7f7f7f", true, {}};
  svg::Series kept{"cache kept, population mean", svg::palette(2), false, {}};
  for (const Row& r : rows) {
    best.points.push_back({double(r.generation), r.best});
    mean.points.push_back({double(r.generation), r.mean});
    kept.points.push_back({double(r.generation), 100 * r.kept});
    if (std::isfinite(r.held_out)) held.points.push_back({double(r.generation), 100 * r.held_out});
    if (std::isfinite(full_accuracy)) full.points.push_back({double(r.generation), 100 * full_accuracy});
  }
  svg::chart(stem + "_fitness.svg", "NAMM fitness by generation", {"generation"}, {"fitness"}, {best, mean});
  svg::chart(stem + "_held_out.svg", "held-out accuracy and cache kept", {"generation"}, {"%"}, {held, full, kept});
}
}  // namespace

int main(int argc, char** argv) {
  Index population = 32, n_docs = 2, length = 768, n_up = 128, samples = 16, held_out = 64, eval_every = 5, task_length = 1024;
  double sigma = 0.065, memory_weight = 0.1;
  std::string generations_text = "20", fitness_kind = "task", task_text = "fact_detection", metric = "likelihood", budget_text;
  std::string model_dir, corpus, out = "namm_evolved.safetensors", csv_path = "namm_evolve.csv", ckpt;
  examples::Ranks ranks(argc, argv);  // under mpirun, the population is evaluated across the MPI ranks
  return ranks.finish(cli::run(
      argc, argv,
      "engram-namm-evolve: evolves NAMM weights with CMA-ES on a trained host model. Default fitness (official): the host's "
      "memory-task score with the evicting cache over its full-cache score on the same fresh samples, in incremental stages of "
      "tasks, the CMA-ES mean scored on held-out samples; --fitness kl: fidelity of next-token distributions to the full cache "
      "plus a reward for the memory freed. Writes CSV + SVG curves and the weights (for engram-namm/-generate/-eval --namm-weights).",
      [&](CLI::App& app) {
        app.add_option("--model", model_dir, "trained host model directory (e.g. written by engram-train --task ...)")
            ->required()
            ->check(CLI::ExistingDirectory);
        app.add_option("--fitness", fitness_kind, "task: the host's task score (official); kl: next-token fidelity + memory reward")
            ->check(CLI::IsMember({"task", "kl"}));
        app.add_option("--generations", generations_text,
                       "CMA-ES generations per stage: one number for every stage, or one per stage (comma-separated)");
        app.add_option("--population", population, "lambda (32 is the official setting)")->check(CLI::Range(Index(2), Index(1) << 16));
        app.add_option("--sigma", sigma, "initial step size (0.065 is the official setting)")->check(cli::range(1e-12, 1e6));
        app.add_option("--task", task_text,
                       "task fitness: comma-separated tasks; stage k scores the first k (fact_memorization, fact_detection, reasoning)");
        app.add_option("--task-length", task_length, "task fitness: tokens per sample, question included")->check(CLI::Range(Index(64), Index(1) << 24));
        app.add_option("--samples", samples, "task fitness: fresh samples per task and generation, shared by the population")
            ->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--metric", metric, "task fitness: likelihood (log p(answer) minus the full cache's) or accuracy (over the full cache's)")
            ->check(CLI::IsMember({"likelihood", "accuracy"}));
        app.add_option("--budget", budget_text, "task fitness: NAMM's hard cap, tokens (e.g. 256) or a ratio of the input (e.g. 0.25); "
                                                "default: the threshold rule alone")
            ->check(examples::budget_validator());
        app.add_option("--held-out", held_out, "task fitness: held-out samples per task scoring the CMA-ES mean (0: none)")
            ->check(CLI::Range(Index(0), Index(1) << 20));
        app.add_option("--eval-every", eval_every, "task fitness: score the CMA-ES mean on the held-out samples every N generations")
            ->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--docs", n_docs, "kl fitness: training documents")->check(CLI::Range(Index(1), Index(1) << 16));
        app.add_option("--length", length, "kl fitness: tokens per document (more than --n-up)")->check(CLI::Range(Index(1), Index(1) << 24));
        app.add_option("--memory-weight", memory_weight, "kl fitness: reward per unit of cache freed, against the KL penalty")->check(cli::range(-1e6, 1e6));
        app.add_option("--n-up", n_up, "NAMM update interval, a multiple of 16")
            ->check(CLI::Range(Index(16), Index(1) << 20))
            ->check(cli::checked_by("INT", [](const std::string& t) {
              namm::NammConfig c;
              c.n_up = std::stol(t);
              c.validate();
            }));
        app.add_option("--corpus", corpus, "background text: a file or a directory (default: Debian's fortunes)")->check(cli::regular_file(/*allow_directory=*/true));
        app.add_option("--out", out, "weights file written at the end")->check(cli::output_file());
        app.add_option("--csv", csv_path, "fitness curve (and PREFIX_fitness.svg, PREFIX_held_out.svg beside it)")->check(cli::output_file());
        app.add_option("--checkpoint", ckpt, "optimiser state saved every generation; resumed from when it exists")
            ->check(cli::output_file());
        app.get_option("--seed")->description("seed of CMA-ES sampling and of the fitness samples");
      },
      [&] {
        namm::NammConfig cfg;
        cfg.n_up = n_up;
        cfg.validate();
        const bool task_fitness = fitness_kind == "task";
        if (!task_fitness && length <= cfg.n_up)
          cli::usage_error("--length", "documents must be longer than --n-up (" + std::to_string(cfg.n_up) + "), got " + std::to_string(length));
        if (task_fitness && task_length < cfg.n_up)
          cli::usage_error("--task-length", "samples must be at least --n-up (" + std::to_string(cfg.n_up) + ") tokens, got " + std::to_string(task_length));
        const Decoder<float> model = hf::load_decoder<float>(model_dir);
        if (model.config.vocab_size < 256 && task_fitness)
          cli::usage_error("--model", "the memory tasks are byte tokens: the host needs a vocabulary of at least 256, got " +
                                          std::to_string(model.config.vocab_size));
        const tasks::Corpus background = corpus.empty() ? tasks::Corpus::fortunes() : tasks::Corpus::from_path(corpus);

        // Stages: stage k (1-based) evaluates the first k tasks; generations per stage.
        std::vector<tasks::TaskOptions> all_tasks;
        if (task_fitness)
          for (const std::string& name : split_list(task_text, "--task")) {
            tasks::TaskOptions t;
            t.task = task_named(name), t.length = task_length;
            all_tasks.push_back(t);
          }
        const Index n_stages = task_fitness ? Index(all_tasks.size()) : 1;
        std::vector<Index> stage_end;  // cumulative generation count at the end of each stage
        {
          const std::vector<std::string> g = split_list(generations_text, "--generations");
          if (g.size() != 1 && Index(g.size()) != n_stages)
            cli::usage_error("--generations", "expected one value or one per stage (" + std::to_string(n_stages) + "), got " + std::to_string(g.size()));
          Index total = 0;
          for (Index s = 0; s < n_stages; ++s) {
            const std::string& item = g[g.size() == 1 ? 0 : std::size_t(s)];
            char* end = nullptr;
            const long long v = std::strtoll(item.c_str(), &end, 10);
            if (*end != '\0' || v < 0 || v > (1 << 20)) cli::usage_error("--generations", "\"" + item + "\" is not a count in [0, 2^20]");
            stage_end.push_back(total += Index(v));
          }
        }
        const Index generations = stage_end.back();
        auto stage_of = [&](Index g) {
          Index s = 0;
          while (s + 1 < n_stages && g >= stage_end[std::size_t(s)]) ++s;
          return s;
        };
        auto stage_options = [&](Index s) {
          eval::NammFitnessOptions o;
          o.tasks.assign(all_tasks.begin(), all_tasks.begin() + std::ptrdiff_t(s + 1));
          o.samples = samples;
          o.metric = metric == "accuracy" ? eval::TaskMetric::accuracy : eval::TaskMetric::likelihood;
          o.cap = parse_budget(budget_text);
          o.seed = cli::seed();
          return o;
        };

        // KL fitness: documents and full-cache references.
        std::vector<std::vector<std::int32_t>> docs;
        std::vector<Tensor<float>> reference;
        namm::NormStats stats;
        if (task_fitness) {
          stats = eval::collect_norm_stats(model, background, stage_options(0), cfg);  // frozen from here on (official)
        } else {
          for (Index d = 0; d < n_docs; ++d) docs.push_back(examples::babi_document(length, std::uint64_t(100 + d), corpus, "--length").tokens);
          for (const auto& doc : docs) {
            auto s = model.make_state();
            reference.push_back(model.prefill(doc, s, {.all_logits = true}));
          }
          namm::StatsCollector collector;
          const auto collect = namm::NammPolicy<float>::collecting(collector, cfg);
          for (const auto& doc : docs) {
            auto s = model.make_state(&collect);
            model.prefill(doc, s);
          }
          stats = collector.stats;
        }

        // Fitness: -mean KL(full || namm) over scored positions + memory_weight * (1 - kept fraction).
        auto evaluate_kl = [&](const Eigen::VectorXd& theta, double* kept_out) {
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
            kept += s.cache_kept();
          }
          kept /= double(docs.size());
          if (kept_out) *kept_out = kept;
          return -kl / double(scored) + memory_weight * (1.0 - kept);
        };

        // Held-out score of a NAMM on every task of stage s (eval_seed samples, never seen by the fitness).
        auto held_out_score = [&](const CachePolicy<float>* policy, Index s, double* log_prob, double* kept) {
          const eval::DecoderReader<float> reader(model, policy);
          Index correct = 0, n = 0;
          *log_prob = 0, *kept = 0;
          for (Index t = 0; t <= s; ++t) {
            const eval::TaskScore r = eval::score_task(reader, background, all_tasks[std::size_t(t)], {.samples = held_out});
            correct += r.correct, n += r.samples;
            *log_prob += r.answer_log_prob / double(s + 1), *kept += r.mean_cache_kept / double(s + 1);
          }
          return std::pair(double(correct) / double(n), eval::wilson(correct, n));
        };
        auto namm_of = [&](const Eigen::VectorXd& theta) {
          namm::NammWeights<float> w;
          w.theta = Tensor<float>({theta.size()});
          for (Index i = 0; i < theta.size(); ++i) w.theta[i] = float(theta(i));
          w.stats = stats;
          w.config = cfg;
          return w;
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
        std::vector<Row> rows;
        double full_accuracy = NAN;
        train::all_or_none(c, [&] {
          if (!ranks.root()) return;
          if (es.generation() > 0) {
            std::printf("resumed from %s at generation %td\n", ckpt.c_str(), es.generation());
            rows = read_rows(csv_path);
            std::erase_if(rows, [&](const Row& r) { return r.generation >= es.generation(); });
          }
          csv.open(csv_path, std::ios::trunc);
          check(bool(csv), csv_path, "cannot open for writing");
          csv << kCsvHeader << '\n';
          for (const Row& r : rows)
            csv << r.generation << ',' << r.stage << ',' << r.best << ',' << r.mean << ',' << r.sigma << ',' << r.kept << ',' << r.held_out << ','
                << r.held_lo << ',' << r.held_hi << ',' << r.held_log_prob << ',' << r.held_kept << ',' << r.seconds << '\n';
          std::printf("evolving %td NAMM parameters on %s (%lld parameters): lambda %td, sigma0 %.3f, n_up %td\n", o.dim, model_dir.c_str(),
                      (long long)model.n_params(), o.lambda, o.sigma0, cfg.n_up);
          if (task_fitness) {
            std::printf("fitness: %s of %s samples of %td tokens, %td fresh samples per task and generation, NAMM cap %s; stages:", metric.c_str(),
                        task_text.c_str(), task_length, samples, budget_text.empty() ? "none" : budget_text.c_str());
            for (Index s = 0; s < n_stages; ++s) std::printf(" %td: generations < %td", s + 1, stage_end[std::size_t(s)]);
            std::printf("\n");
            if (held_out > 0) {
              double lp = 0, kept = 0;
              const auto [acc, ci] = held_out_score(nullptr, n_stages - 1, &lp, &kept);
              full_accuracy = acc;
              std::printf("full cache on %td held-out samples per task: accuracy %.1f%% [%.1f%%, %.1f%%], log p(answer) %.3f\n", held_out, 100 * acc,
                          100 * ci.lo, 100 * ci.hi, lp);
            }
          } else {
            std::printf("fitness: -KL to the full cache over %td documents of %td tokens + %.3g x memory freed\n", n_docs, length, memory_weight);
          }
          if (c) std::printf("population evaluated across %s: candidate i on rank i %% %d\n", ranks.describe().c_str(), ranks.size());
          std::printf("%5s %5s %12s %12s %10s %10s %24s %8s\n", "gen", "stage", "best", "mean", "sigma", "kept(mean)", "held-out accuracy (mean)", "s");
        });
        std::unique_ptr<eval::NammFitness<float>> fitness;
        Index fitness_stage = -1;
        while (es.generation() < generations) {
          const auto t0 = std::chrono::steady_clock::now();
          const Index gen = es.generation(), stage = stage_of(gen);
          if (task_fitness) {
            if (stage != fitness_stage) fitness = std::make_unique<eval::NammFitness<float>>(model, background, stats, cfg, stage_options(stage));
            fitness_stage = stage;
            fitness->start_generation(gen);
          }
          const namm::Generation g = namm::generation(es, c, 2, [&](const Eigen::VectorXd& x, double* v) {
            if (!task_fitness) {
              v[0] = evaluate_kl(x, &v[1]);
              return;
            }
            std::vector<float> theta(static_cast<std::size_t>(x.size()));
            for (Index i = 0; i < x.size(); ++i) theta[std::size_t(i)] = float(x(i));
            const auto r = (*fitness)(theta);
            v[0] = r.fitness, v[1] = r.cache_kept;
          });
          Row row;
          row.generation = gen, row.stage = stage + 1;
          for (Index i = 0; i < g.x.cols(); ++i) {
            row.mean += g.fitness(i) / double(g.x.cols()), row.kept += g.value(i, 1) / double(g.x.cols());
            row.best = i == 0 ? g.fitness(i) : std::max(row.best, g.fitness(i));
          }
          row.sigma = es.sigma();
          train::all_or_none(c, [&] {
            if (!ranks.root()) return;
            const bool last = es.generation() == generations;
            if (task_fitness && held_out > 0 && (es.generation() % eval_every == 0 || last)) {
              const auto policy = namm_of(es.mean()).make_policy(parse_budget(budget_text));
              const auto [acc, ci] = held_out_score(policy.get(), stage, &row.held_log_prob, &row.held_kept);
              row.held_out = acc, row.held_lo = ci.lo, row.held_hi = ci.hi;
            }
            row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            char held[64] = "";
            if (std::isfinite(row.held_out))
              std::snprintf(held, sizeof held, "%.1f%% [%.1f, %.1f] kept %.0f%%", 100 * row.held_out, 100 * row.held_lo, 100 * row.held_hi,
                            100 * row.held_kept);
            std::printf("%5td %5td %12.5f %12.5f %10.5f %10.3f %24s %8.1f\n", gen, row.stage, row.best, row.mean, row.sigma, row.kept, held, row.seconds);
            std::fflush(stdout);
            csv << row.generation << ',' << row.stage << ',' << row.best << ',' << row.mean << ',' << row.sigma << ',' << row.kept << ','
                << row.held_out << ',' << row.held_lo << ',' << row.held_hi << ',' << row.held_log_prob << ',' << row.held_kept << ','
                << row.seconds << '\n';
            csv.flush();
            rows.push_back(row);
            write_charts(csv_path, rows, full_accuracy);
            if (!ckpt.empty()) es.save(ckpt);
          });
        }
        if (!ranks.root()) return 0;  // rank 0 writes the weights
        // The paper evaluates the CMA-ES mean, not the best sample.
        const namm::NammWeights<float> w = namm_of(es.mean());
        namm::save_namm(out, w);
        if (task_fitness && held_out > 0) {
          double lp = 0, kept = 0;
          const auto policy = w.make_policy(parse_budget(budget_text));
          const auto [acc, ci] = held_out_score(policy.get(), n_stages - 1, &lp, &kept);
          std::printf("mean of the search distribution on %td held-out samples per task: accuracy %.1f%% [%.1f%%, %.1f%%] (full cache %.1f%%), "
                      "log p(answer) %.3f, kept %.1f%% of the cache; weights -> %s, curve -> %s\n",
                      held_out, 100 * acc, 100 * ci.lo, 100 * ci.hi, 100 * full_accuracy, lp, 100 * kept, out.c_str(), csv_path.c_str());
        } else if (!task_fitness) {
          double kept = 0;
          const double f = evaluate_kl(es.mean(), &kept);
          std::printf("mean of the search distribution: fitness %.5f, kept %.1f%% of the cache; weights -> %s, curve -> %s\n", f, 100 * kept,
                      out.c_str(), csv_path.c_str());
        } else {
          std::printf("mean of the search distribution -> %s, curve -> %s\n", out.c_str(), csv_path.c_str());
        }
        return 0;
      }));
}
