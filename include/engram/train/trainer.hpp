// The training loop of a language model: batches from a BatchSource, gradient accumulation over
// micro-batches, AdamW with warm-up and decay, held-out evaluation, CSV + SVG curves, checkpoints
// every N steps and bit-identical resume; data-parallel over the ranks of a train::Collective.
#pragma once

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

#include "engram/io/svg.hpp"
#include "engram/train/checkpoint.hpp"
#include "engram/train/data.hpp"
#include "engram/train/data_parallel.hpp"
#include "engram/train/schedule.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// Options of a training run.
struct TrainerOptions {
  Index steps = 1000;        ///< optimizer steps in total (a resumed run continues to this)
  Index batch = 8;           ///< sequences per optimizer step
  Index micro_batch = 0;     ///< sequences per forward/backward (0: the whole batch); gradients accumulate
  Schedule schedule;         ///< learning rate per step
  AdamWOptions adamw;
  Index log_every = 10;      ///< progress (and a CSV row) every N steps
  Index eval_every = 100;    ///< held-out loss every N steps (0: never)
  Index eval_batches = 4;    ///< held-out batches of `batch` sequences per evaluation
  Index checkpoint_every = 0;  ///< checkpoint every N steps and at the end (0: only at the end); needs out_dir
  std::filesystem::path out_dir;  ///< checkpoint/, train.csv, train.svg (empty: nothing written)
  bool resume = false;       ///< continue from out_dir/checkpoint when it exists
  StepOptions step;          ///< gradient checkpointing, attention window
  std::uint64_t seed = 0;    ///< recorded in trainer.json (the data source carries its own)
  /// Data-parallel ranks (null: a single process). `batch` stays the whole step's batch: its
  /// micro-batches (default size: batch / ranks, rounded up) are split round-robin, micro-batch j to
  /// rank j % size, and the gradients summed over the ranks, so a step sees the same sequences as a
  /// single process with that micro-batch size, whatever the number of ranks. Rank 0 alone writes
  /// out_dir; every rank must see out_dir/checkpoint to resume (checked: the weights must agree).
  Collective* collective = nullptr;

  void validate() const {
    const char* where = "train::TrainerOptions";
    check(steps >= 1, where, "steps must be >= 1, got ", steps);
    check(batch >= 1, where, "batch must be >= 1, got ", batch);
    check(micro_batch >= 0 && micro_batch <= batch, where, "micro_batch must be in [0, batch = ", batch, "], got ", micro_batch);
    check(log_every >= 1, where, "log_every must be >= 1, got ", log_every);
    check(eval_every >= 0 && eval_batches >= 1, where, "eval_every must be >= 0 and eval_batches >= 1");
    check(checkpoint_every >= 0, where, "checkpoint_every must be >= 0, got ", checkpoint_every);
    check(!resume || !out_dir.empty(), where, "resume needs an output directory");
    schedule.validate();
    adamw.validate();
  }
};

/// One line of progress (and one row of train.csv).
struct Progress {
  Index step = 0, steps = 0;
  double lr = 0;
  double loss = 0;       ///< mean nats per labelled token of the step's batch
  double grad_norm = 0;  ///< before clipping
  double held_out = std::numeric_limits<double>::quiet_NaN();  ///< mean nats per labelled held-out token (NaN: not evaluated)
  double tokens_per_s = 0;
  double elapsed_s = 0, eta_s = 0;
  Index tokens = 0;      ///< training tokens seen so far
  static double bits(double nats) { return nats / std::numbers::ln2; }
};

/// Trains a decoder (any Decoder: attention, TTT, ...) with AdamW on batches from `source`.
template <class T>
class Trainer {
 public:
  Trainer(Decoder<T>& model, const BatchSource& source, TrainerOptions options, ModelIO<T> io = {},
          const ParameterFilter& trained = {})
      : model_(model), source_(source), options_(std::move(options)), io_(std::move(io)), grads_(model, trained),
        optimizer_(grads_, options_.adamw) {
    options_.validate();
  }

  Gradients<T>& gradients() { return grads_; }
  AdamW<T>& optimizer() { return optimizer_; }
  const std::vector<Progress>& history() const { return history_; }
  StepBuffers<T>& buffers() { return buf_; }
  /// The checkpoint directory (out_dir/checkpoint).
  std::filesystem::path checkpoint_dir() const { return options_.out_dir / "checkpoint"; }

  /// Mean nats per labelled token over the held-out batches (forward only).
  /// Collective when distributed: the micro-batches are split over the ranks as in training.
  double held_out_loss() {
    double total[2] = {0, 0};  // loss sum, labelled positions
    all_or_none(options_.collective, [&] {
      Index k = 0;
      for (Index i = 0; i < options_.eval_batches; ++i) {
        const Index n = std::max<Index>(options_.micro_batch, options_.batch);
        for (Index s = 0; s < n; s += micro(), ++k) {
          if (!owns(options_.collective, k)) continue;
          const Batch b = source_.held_out_batch(i * n + s, std::min(micro(), n - s));
          StepOptions o = options_.step;
          o.backward = false;
          const CrossEntropyStats st = lm_step<T>(model_, b, nullptr, buf_, T(0), o);
          total[0] += st.loss_sum, total[1] += double(st.count);
        }
      }
    });
    if (options_.collective) options_.collective->sum(total);
    return total[1] > 0 ? total[0] / total[1] : std::numeric_limits<double>::quiet_NaN();
  }

  /// One optimizer step (step number = optimizer().step_count() + 1); returns its progress record.
  /// Collective when distributed: this rank's micro-batches, then the gradients summed over the
  /// ranks (each rank scales by 1 / the labelled positions of the whole batch, summed first), then
  /// the same optimizer step on every rank.
  Progress step() {
    Collective* const c = options_.collective;
    const Index t = optimizer_.step_count() + 1;
    grads_.zero();
    std::vector<Batch> micro_batches;
    double sums[3] = {0, 0, 0};  // labelled positions, loss sum, tokens: this rank's, then every rank's
    all_or_none(c, [&] {
      for (Index s = 0, j = 0; s < options_.batch; s += micro(), ++j)
        if (owns(c, j)) {
          micro_batches.push_back(source_.train_batch(t, j, std::min(micro(), options_.batch - s)));
          sums[0] += double(micro_batches.back().count());
        }
    });
    if (c) c->sum(std::span(sums, 1));
    const Index count = Index(sums[0]);
    check(count > 0, "train::Trainer", "step ", t, ": the batch has no labelled position");
    all_or_none(c, [&] {
      for (const Batch& b : micro_batches) {
        sums[1] += lm_step<T>(model_, b, &grads_, buf_, T(1.0 / double(count)), options_.step).loss_sum;
        sums[2] += double(b.rows());
      }
    });
    if (c) {
      reducer_.sum(grads_, *c);
      c->sum(std::span(sums + 1, 2));
    }
    const double loss_sum = sums[1];
    const Index tokens = Index(sums[2]);
    Progress p;
    p.step = t;
    p.steps = options_.steps;
    p.loss = loss_sum / double(count);
    const std::string bad = grads_.first_non_finite();
    if (!std::isfinite(p.loss) || !bad.empty())
      fail("train::Trainer", "step ", t, ": ", !std::isfinite(p.loss) ? "the loss is " + std::to_string(p.loss) : "the gradient of " + bad + " is not finite",
           "; training stopped before updating the weights", last_checkpoint_.empty() ? std::string(" (no checkpoint written yet)")
                                                                                      : "; the last good checkpoint is " + last_checkpoint_);
    p.lr = options_.schedule.at(t);
    const ClipStats clipped = optimizer_.step(p.lr);
    p.grad_norm = clipped.norm;
#ifndef NDEBUG
    if (c) check_same(*c, parameter_fingerprint(grads_), "the weights after step " + std::to_string(t));
#endif
    tokens_ += tokens;
    p.tokens = tokens_;
    return p;
  }

  /// Runs (or resumes) to options.steps, or stops after step `until` when 0 < until < steps (as an
  /// interrupted run would: the schedule still spans options.steps). `on_progress` gets every
  /// logged record.
  /// Collective when distributed: every rank gets the same records; rank 0 writes the files.
  void run(const std::function<void(const Progress&)>& on_progress = {}, Index until = 0) {
    if (options_.resume) resume();
    if (options_.collective) check_same(*options_.collective, parameter_fingerprint(grads_), "the weights at the start of training");
    const Index last = until > 0 ? std::min(until, options_.steps) : options_.steps;
    const auto t0 = std::chrono::steady_clock::now();
    const Index first = optimizer_.step_count();
    Index window_tokens = 0;
    auto window_t0 = t0;
    while (optimizer_.step_count() < last) {
      Progress p = step();
      window_tokens += options_.batch * source_.seq_len();
      const Index t = p.step;
      const bool log = t % options_.log_every == 0 || t == options_.steps;
      const bool eval = options_.eval_every > 0 && (t % options_.eval_every == 0 || t == options_.steps);
      if (eval) p.held_out = held_out_loss();
      if (log || eval) {
        const auto now = std::chrono::steady_clock::now();
        const double window_s = std::chrono::duration<double>(now - window_t0).count();
        p.tokens_per_s = window_s > 0 ? double(window_tokens) / window_s : 0;
        p.elapsed_s = elapsed_before_ + std::chrono::duration<double>(now - t0).count();
        const double per_step = std::chrono::duration<double>(now - t0).count() / double(t - first);
        p.eta_s = per_step * double(options_.steps - t);
        window_tokens = 0;
        window_t0 = now;
        history_.push_back(p);
        if (on_progress) on_progress(p);
        all_or_none(options_.collective, [&] {
          if (is_root(options_.collective)) write_curves();
        });
      }
      if (!options_.out_dir.empty() && ((options_.checkpoint_every > 0 && t % options_.checkpoint_every == 0) || t == options_.steps)) {
        elapsed_at_checkpoint_ = elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        checkpoint();
      }
    }
  }

  /// Writes out_dir/checkpoint now (collective when distributed: rank 0 writes the weights every
  /// rank holds, checked first). It holds nothing rank-specific, so any number of ranks resumes it.
  void checkpoint() {
    check(!options_.out_dir.empty(), "train::Trainer", "no output directory for checkpoints");
    Collective* const c = options_.collective;
    if (c) check_same(*c, parameter_fingerprint(grads_), "the weights at step " + std::to_string(optimizer_.step_count()));
    all_or_none(c, [&] {
      if (!is_root(c)) return;
      json::Value state = json::Value::object();
      state.set("seed", json::Value(std::int64_t(options_.seed)));
      state.set("tokens", json::Value(std::int64_t(tokens_)));
      state.set("elapsed_s", json::Value(elapsed_at_checkpoint_));
      state.set("data", source_.describe());
      save_checkpoint(checkpoint_dir(), io_, model_, optimizer_, std::move(state));
    });
    last_checkpoint_ = checkpoint_dir().string() + " (step " + std::to_string(optimizer_.step_count()) + ")";
  }

 private:
  Index micro() const {
    const Index r = ranks(options_.collective);
    return options_.micro_batch > 0 ? options_.micro_batch : (options_.batch + r - 1) / r;
  }

  // Every rank reads the checkpoint; rank 0's step and weights must be everyone's.
  void resume() {
    std::filesystem::path dir;
    json::Value state;
    all_or_none(options_.collective, [&] {
      dir = resumable_checkpoint(checkpoint_dir());
      if (!dir.empty()) state = load_checkpoint(dir, io_, model_, optimizer_);
    });
    if (options_.collective) {
      const std::uint64_t step = std::uint64_t(optimizer_.step_count());
      check_same(*options_.collective, fingerprint(&step, sizeof step, parameter_fingerprint(grads_)),
                 "the resumed step and weights (every rank must see the same " + checkpoint_dir().string() + ")");
    }
    if (dir.empty()) return;
    tokens_ = Index(state.at("tokens").as_integer("tokens"));
    elapsed_before_ = elapsed_at_checkpoint_ = state.at("elapsed_s").as_number("elapsed_s");
    last_checkpoint_ = dir.string() + " (step " + std::to_string(optimizer_.step_count()) + ")";
    read_curves(optimizer_.step_count());
  }

  // train.csv holds every logged record; a resumed run keeps the rows up to its checkpoint.
  static constexpr const char* kCsvHeader = "step,lr,loss,bits,grad_norm,held_out_loss,held_out_bits,tokens,tokens_per_s,elapsed_s";
  void write_curves() const {
    if (options_.out_dir.empty()) return;
    std::filesystem::create_directories(options_.out_dir);
    const std::filesystem::path csv = options_.out_dir / "train.csv";
    std::ofstream f(csv, std::ios::trunc);
    f << kCsvHeader << '\n';
    for (const Progress& p : history_)
      f << p.step << ',' << p.lr << ',' << p.loss << ',' << Progress::bits(p.loss) << ',' << p.grad_norm << ',' << p.held_out << ','
        << Progress::bits(p.held_out) << ',' << p.tokens << ',' << p.tokens_per_s << ',' << p.elapsed_s << '\n';
    check(bool(f), csv.string(), "write failed");
    svg::Series train{"training batch", svg::palette(0), false, {}}, held{"held-out", svg::palette(1), false, {}};
    for (const Progress& p : history_) {
      train.points.push_back({double(p.step), Progress::bits(p.loss)});
      if (std::isfinite(p.held_out)) held.points.push_back({double(p.step), Progress::bits(p.held_out)});
    }
    svg::chart((options_.out_dir / "train.svg").string(), "training curves", {"step"}, {"bits per token"}, {train, held});
  }
  void read_curves(Index up_to) {
    history_.clear();
    std::ifstream f(options_.out_dir / "train.csv");
    std::string line;
    if (!std::getline(f, line) || line != kCsvHeader) return;
    while (std::getline(f, line)) {
      std::vector<double> v;  // strtod reads the "nan" of rows without a held-out loss
      for (std::size_t i = 0; i <= line.size();) {
        const std::size_t j = std::min(line.find(',', i), line.size());
        v.push_back(std::strtod(line.substr(i, j - i).c_str(), nullptr));
        i = j + 1;
      }
      if (v.size() != 10) continue;
      Progress p;
      p.step = Index(v[0]), p.lr = v[1], p.loss = v[2], p.grad_norm = v[4], p.held_out = v[5], p.tokens = Index(v[7]);
      p.tokens_per_s = v[8], p.elapsed_s = v[9], p.steps = options_.steps;
      if (p.step <= up_to) history_.push_back(p);
    }
  }

  Decoder<T>& model_;
  const BatchSource& source_;
  TrainerOptions options_;
  ModelIO<T> io_;
  Gradients<T> grads_;
  AdamW<T> optimizer_;
  GradientReducer<T> reducer_;
  StepBuffers<T> buf_;
  std::vector<Progress> history_;
  Index tokens_ = 0;
  double elapsed_before_ = 0, elapsed_at_checkpoint_ = 0;
  std::string last_checkpoint_;
};

}  // namespace train
ENGRAM_NAMESPACE_END
