// engram-rmt-eval: the scaling report's Figure 4 in miniature: a trained RMT or ARMT checkpoint
// scored on held-out samples of a memory task at lengths 1k .. 1M tokens and more (the same
// weights), by the likelihood of the 6 candidate answers, with Wilson intervals; beside it the
// no-memory baseline (the same model reading only the last segment). Prints a table with the
// accuracy, wall time, tokens/s and the peak bytes a sequence holds; writes CSV + SVG.
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "engram/eval/memory_tasks.hpp"
#include "engram/eval/rmt_reader.hpp"
#include "engram/io/svg.hpp"
#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/loader.hpp"

using namespace engram;

namespace {

/// The no-memory baseline: the same model, but each scored continuation sees only the tokens of the
/// last segment of the context (a fresh state reads them), so nothing before it can matter.
template <class W>
class LastSegmentReader final : public eval::Reader {
 public:
  LastSegmentReader(const W& model, rmt::Continuation mode) : model_(model), mode_(mode) {}
  class S final : public eval::Session {
   public:
    S(const W& m, rmt::Continuation mode) : m_(m), mode_(mode) {}
    void read(std::span<const std::int32_t> tokens) override {
      const std::size_t seg = std::size_t(m_.segment_size());
      for (std::int32_t t : tokens) {
        if (tail_.size() == seg) tail_.clear();  // a new segment starts
        tail_.push_back(t);
      }
    }
    void score(std::span<const std::int32_t> continuation, std::span<double> out) override {
      auto st = m_.make_state();
      m_.push(tail_, st);
      m_.score(continuation, st, out, mode_);
      read(continuation);
    }
    std::unique_ptr<eval::Session> fork() const override { return std::make_unique<S>(*this); }
    std::size_t state_bytes() const override { return tail_.capacity() * sizeof(std::int32_t); }

   private:
    const W& m_;
    rmt::Continuation mode_;
    std::vector<std::int32_t> tail_;
  };
  std::unique_ptr<eval::Session> start() const override { return std::make_unique<S>(model_, mode_); }
  std::string describe() const override { return "no memory (last segment only)"; }
  Index vocab_size() const override { return model_.backbone().config.vocab_size; }

 private:
  const W& model_;
  rmt::Continuation mode_;
};

std::vector<Index> parse_lengths(const std::string& text) {
  std::vector<Index> v;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    std::size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || x < 1) cli::usage_error("--lengths", "expected positive integers separated by commas, got \"" + text + "\"");
    v.push_back(Index(x));
  }
  return v;
}

double max_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

struct Row {
  std::string model;
  Index length = 0, samples = 0, correct = 0;
  double accuracy = 0, lo = 0, hi = 0, seconds = 0, tokens_per_s = 0;
  std::size_t peak_bytes = 0;
  double rss_mb = 0;
};

template <class W>
int evaluate(const W& model, const std::string& task_name, tasks::Questions questions, const std::vector<Index>& lengths, Index samples, Index long_samples, Index long_from,
             bool baseline, bool confusion, const std::string& out, const tasks::Corpus& corpus, std::optional<rmt::Continuation> continuation) {
  const rmt::Continuation mode = continuation.value_or(rmt::answer_continuation(model.backbone().config));
  tasks::TaskOptions t;
  t.task = tasks::parse_task(task_name);
  t.questions = questions;
  t.segment_size = model.segment_size();
  std::printf("engram-rmt-eval: %s on %s, held-out samples (eval stream from 0), answers %s\n", model.describe().c_str(), task_name.c_str(),
              mode == rmt::Continuation::answer ? "continue the last segment" : "streamed (a full segment closes first)");
  std::printf("%-30s %10s %8s %8s %17s %9s %12s %12s %9s\n", "model", "tokens", "samples", "acc", "95% CI", "seconds", "tokens/s", "peak state", "max RSS");
  std::vector<Row> rows;
  const eval::MemoryReader<W> mem(model, "", mode);
  const LastSegmentReader<W> last(model, mode);
  for (Index len : lengths) {
    t.length = len;
    const Index n = len >= long_from ? long_samples : samples;
    std::vector<const eval::Reader*> readers = {&mem};
    if (baseline) readers.push_back(&last);
    for (const eval::Reader* r : readers) {
      const auto t0 = std::chrono::steady_clock::now();
      eval::TaskEvalOptions eo;
      eo.samples = n;
      const eval::TaskScore sc = eval::score_task(*r, corpus, t, eo);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      Row row;
      row.model = r == &mem ? (model.describe().substr(0, model.describe().find(' ')) + " memory") : "no memory (last segment)";
      row.length = len, row.samples = n, row.correct = sc.correct, row.accuracy = sc.accuracy, row.lo = sc.ci.lo, row.hi = sc.ci.hi;
      row.seconds = secs, row.tokens_per_s = double(len) * double(n) / secs;
      // Peak bytes of one sequence (carried state + one segment's scratch), read once at this length.
      if (r == &mem) {
        auto st = model.make_state();
        tasks::SampleStream stream(corpus, t, eval::eval_seed(0));
        std::vector<std::int32_t> chunk(std::size_t(std::min<Index>(len, 65536)));
        while (stream.remaining() > 0) {
          const Index k = stream.read(chunk);
          model.push(std::span<const std::int32_t>(chunk).first(std::size_t(k)), st);
        }
        row.peak_bytes = st.peak_bytes();
      }
      row.rss_mb = max_rss_mb();
      rows.push_back(row);
      std::printf("%-30s %10lld %8lld %8.3f    [%.3f, %.3f] %9.1f %12.0f %10.1fKB %7.0fMB\n", row.model.c_str(), (long long)len, (long long)n,
                  row.accuracy, row.lo, row.hi, row.seconds, row.tokens_per_s, double(row.peak_bytes) / 1024.0, row.rss_mb);
      if (confusion && r == &mem) {
        // Which answer each true place gets (rows: truth, columns: prediction).
        std::vector<std::vector<int>> cm(tasks::kPlaces.size(), std::vector<int>(tasks::kPlaces.size(), 0));
        for (Index i = 0; i < n; ++i) {
          const int truth = tasks::SampleStream(corpus, t, eval::eval_seed(i)).info().answer;
          ++cm[std::size_t(truth)][std::size_t(sc.predictions[std::size_t(i)])];
        }
        for (std::size_t a = 0; a < cm.size(); ++a) {
          std::printf("    %-9s", std::string(tasks::kPlaces[a]).c_str());
          for (int v : cm[a]) std::printf(" %4d", v);
          std::printf("\n");
        }
      }
      std::fflush(stdout);
    }
  }
  if (!out.empty()) {
    std::filesystem::create_directories(out);
    std::ofstream f(std::filesystem::path(out) / "accuracy.csv");
    f << "model,task,tokens,samples,correct,accuracy,ci_lo,ci_hi,seconds,tokens_per_s,peak_state_bytes,max_rss_mb\n";
    for (const Row& r : rows)
      f << r.model << ',' << task_name << ',' << r.length << ',' << r.samples << ',' << r.correct << ',' << r.accuracy << ',' << r.lo << ','
        << r.hi << ',' << r.seconds << ',' << r.tokens_per_s << ',' << r.peak_bytes << ',' << r.rss_mb << '\n';
    std::vector<svg::Series> series;
    for (const Row& r : rows) {
      auto it = std::find_if(series.begin(), series.end(), [&](const svg::Series& s) { return s.name == r.model; });
      if (it == series.end()) series.push_back({r.model, svg::palette(series.size()), series.size() > 0, {}}), it = series.end() - 1;
      it->points.push_back({double(r.length), r.accuracy});
    }
    series.push_back({"chance (1/6)", "#999999", true, {{double(lengths.front()), 1.0 / 6}, {double(lengths.back()), 1.0 / 6}}});
    svg::chart((std::filesystem::path(out) / "accuracy.svg").string(), task_name + ": accuracy by input length", {"tokens", true},
               {"accuracy"}, series);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, task = "fact_memorization", questions = "both", lengths_text = "1024,4096,16384,65536,262144,1048576", out, background;
  Index samples = 100, long_samples = 50, long_from = Index(1) << 20;
  std::string continuation = "auto";
  bool baseline = false, confusion = false;
  return cli::run(
      argc, argv,
      "engram-rmt-eval: accuracy of a trained RMT or ARMT checkpoint on a memory task at many input lengths (the same weights), "
      "with 95% Wilson intervals and, with --baseline, the no-memory baseline; CSV + SVG with --out.",
      [&](CLI::App& app) {
        app.add_option("--model", model_dir, "RMT or ARMT checkpoint directory (engram-rmt-train's OUT/best)")->required()->check(CLI::ExistingDirectory);
        app.add_option("--task", task, "memory task")->check(CLI::IsMember({"fact_memorization", "fact_detection", "reasoning"}));
        app.add_option("--questions", questions, "reasoning: qa4 question forms, both (bAbI's mix), direct or inverse")
            ->check(CLI::IsMember({"both", "direct", "inverse"}));
        app.add_option("--lengths", lengths_text, "document lengths in tokens (question included; the answer follows)");
        app.add_option("--samples", samples, "held-out samples per length")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--long-samples", long_samples, "samples per length from --long-from tokens on")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--long-from", long_from, "lengths from which --long-samples applies")->check(CLI::Range(Index(1), Index(1) << 40));
        app.add_flag("--baseline", baseline, "also score the no-memory baseline (the same model reading only the last segment)");
        app.add_option("--continuation", continuation,
                       "where the candidate answers go: answer (they continue the question's segment, as the official RMT generate), "
                       "stream (more of the sequence: a question that ends a segment leaves its answer to a new one), or auto: answer "
                       "unless the backbone has a learned position table (no rows past a full segment)")
            ->check(CLI::IsMember({"auto", "answer", "stream"}));
        app.add_flag("--confusion", confusion, "print which answer each true place gets (memory model)");
        app.add_option("--background", background, "background text (default: Debian's fortunes)")->check(cli::regular_file());
        app.add_option("--out", out, "directory for accuracy.csv and accuracy.svg");
      },
      [&] {
        const auto lengths = parse_lengths(lengths_text);
        std::optional<rmt::Continuation> mode;
        if (continuation != "auto") mode = continuation == "answer" ? rmt::Continuation::answer : rmt::Continuation::stream;
        const tasks::Corpus corpus = background.empty() ? tasks::Corpus::fortunes() : tasks::Corpus::from_path(background);
        const json::Value cfg = read_json_file(std::filesystem::path(model_dir) / "config.json");
        if (cfg.is_object() && cfg.find("armt")) {
          const auto m = rmt::load_armt<float>(model_dir);
          return evaluate(m, task, tasks::parse_questions(questions), lengths, samples, long_samples, long_from, baseline, confusion, out, corpus, mode);
        }
        const auto m = rmt::load<float>(model_dir);
        if (m.config().layout != rmt::Layout::decoder) cli::usage_error("--model", "an encoder-layout RMT classifies; this program scores decoders");
        return evaluate(m, task, tasks::parse_questions(questions), lengths, samples, long_samples, long_from, baseline, confusion, out, corpus, mode);
      });
}
