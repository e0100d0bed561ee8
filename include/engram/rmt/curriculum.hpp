// Curriculum training of an RMT or ARMT on a memory task, as the reference scripts do it (rmt.md 3):
// stage 1 trains on one segment, each later stage allows more; a stage ends when its held-out
// accuracy reaches a threshold or its step budget runs out, and the next one starts from the best
// weights of the previous. Every training sample is freshly generated (tasks::make_sample through
// train::TaskSource, answer bytes appended, loss on the answer) with a length drawn up to the
// stage's maximum; AdamW with warm-up, decay and clipping; best-checkpoint selection on held-out
// samples; CSV + SVG curves; checkpoints and bit-identical resume; data-parallel over the ranks
// of a train::Collective.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/io/svg.hpp"
#include "engram/rmt/save.hpp"
#include "engram/rmt/segments.hpp"
#include "engram/tasks/corpus.hpp"
#include "engram/train/checkpoint.hpp"
#include "engram/train/data.hpp"
#include "engram/train/data_parallel.hpp"
#include "engram/train/schedule.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// One stage: samples span 1 to `segments` segments; at most `steps` optimizer steps.
struct CurriculumStage {
  Index segments = 1;
  Index steps = 1000;
};

/// Everything a curriculum run needs besides the model and the background corpus.
struct CurriculumOptions {
  tasks::Task task = tasks::Task::fact_memorization;
  tasks::Questions questions = tasks::Questions::both;  ///< reasoning: the qa4 question forms trained on
  /// Reasoning: label each fact's direction with its place and the question's direction with the
  /// answer as well (tasks/bindings.hpp), in every stage. Without them no model we trained got past
  /// "one of the two places" (bench/results/rmt_reasoning/). The loss and training accuracy then
  /// count these labels with the answer's; the held-out accuracy is the answer's alone.
  bool bindings = false;
  std::vector<CurriculumStage> stages = {{1, 1000}, {2, 1000}, {4, 1000}, {8, 1000}};
  Index min_stage_steps = 100;      ///< a stage may end early only after this many steps
  double advance_accuracy = 0.99;   ///< held-out accuracy that ends a stage early (> 1: never); the last stage always runs its budget
  /// Held-out length of the last stage's evaluations, in segments (0: the stage's own): selecting the
  /// best checkpoint on longer samples than trained favours memories that stay stable.
  Index final_eval_segments = 0;
  /// Background burn-in (0: off): each step's samples are preceded by D whole segments of background
  /// text, D drawn log-uniformly in [0, burn_in_segments] per step, which the memory reads without
  /// gradient (truncated BPTT at the sample's own segments). The sample then starts from a memory
  /// that has already read D segments, as a fact half-way into a long document does: an RMT trained
  /// only on short documents writes a fact well after a few segments and badly after a thousand
  /// (measured: 37/40 after 0 segments of background, 8/40 after 1024). Costs one forward of D
  /// segments per sequence, and the step keeps each segment's input memory (RMT: m x d per
  /// sequence and segment; ARMT also its per-layer associative matrices, so keep N small there);
  /// the answer's loss and the facts stay in the sample. bench/results/rmt_fact_detection/
  /// write_depth.md: on the detection model it did not help (the drift itself gets no gradient).
  Index burn_in_segments = 0;
  /// Fraction of the samples of two or more segments whose document ends within the answer's
  /// length of a segment end, so the answer (all of it, or its end) is predicted in a segment that
  /// holds only the memory (0: the natural rate, about max_answer_bytes / segment_size). A reasoning
  /// answer there needs the question carried in the memory as well as the facts: the reasoning model
  /// of bench/results/rmt_reasoning/ answers 0.92 at 2,032 tokens and 0.52 at 1,024, and 2,500 steps
  /// at 0.3 did not change that.
  double boundary_fraction = 0;
  Index batch = 16;                 ///< sequences per optimizer step
  Index micro_batch = 0;            ///< sequences per forward/backward, run in parallel (0: batch / threads)
  double lr = 1e-3;                 ///< peak learning rate of every stage (warm-up, then decay within the stage)
  double min_lr = 1e-4;
  Index warmup = 50;
  train::Schedule::Decay decay = train::Schedule::Decay::cosine;
  train::AdamWOptions adamw;
  BpttOptions bptt;
  Index log_every = 10;
  Index eval_every = 100;           ///< held-out accuracy every N steps of a stage and at its end
  Index checkpoint_every = 100;     ///< out_dir/checkpoint every N steps (and at every stage end)
  std::filesystem::path out_dir;    ///< checkpoint/, best/, curriculum.csv, curriculum_*.svg (empty: nothing written)
  bool resume = false;              ///< continue from out_dir/checkpoint when it exists
  std::uint64_t seed = 1;
  /// Data-parallel ranks (null: one process), as train::TrainerOptions::collective: micro-batch j
  /// on rank j % size (default micro-batch: batch / (threads x ranks)), gradients and statistics
  /// summed over the ranks, the same AdamW step everywhere; rank 0 evaluates the held-out accuracy
  /// (broadcast, so every rank ends a stage together) and writes out_dir.
  train::Collective* collective = nullptr;

  void validate() const {
    const char* where = "rmt::CurriculumOptions";
    check(!stages.empty(), where, "at least one stage");
    for (const auto& s : stages) check(s.segments >= 1 && s.steps >= 1, where, "stages need >= 1 segment and >= 1 step, got ", s.segments,
                                       " segments, ", s.steps, " steps");
    check(min_stage_steps >= 0, where, "min_stage_steps must be >= 0");
    check(final_eval_segments >= 0, where, "final_eval_segments must be >= 0");
    check(burn_in_segments >= 0 && burn_in_segments <= (Index(1) << 20), where, "burn_in_segments must be in [0, 2^20], got ",
          burn_in_segments);
    check(batch >= 1 && micro_batch >= 0 && micro_batch <= batch, where, "batch must be >= 1 and micro_batch in [0, batch]");
    check(std::isfinite(advance_accuracy), where, "advance_accuracy must be finite");
    check(log_every >= 1 && eval_every >= 1 && checkpoint_every >= 1, where, "log_every, eval_every and checkpoint_every must be >= 1");
    check(!resume || !out_dir.empty(), where, "resume needs an output directory");
    check(boundary_fraction >= 0 && boundary_fraction <= 1, where, "boundary_fraction must be in [0, 1], got ", boundary_fraction);
    check(!bindings || task == tasks::Task::reasoning, where, "binding labels exist for the reasoning task only, got ", tasks::name(task));
    train::Schedule{lr, min_lr, warmup, std::max<Index>(warmup, 1), decay}.validate();
    adamw.validate();
  }
};

/// One logged step (a row of curriculum.csv).
struct CurriculumProgress {
  Index step = 0;          ///< optimizer steps so far, all stages
  Index stage = 0;         ///< 0-based
  Index stage_step = 0;
  Index max_segments = 0;  ///< the stage's longest samples
  Index segments = 0;      ///< segments of this step's samples
  double lr = 0, loss = 0, train_accuracy = 0, grad_norm = 0;
  double held_out = std::numeric_limits<double>::quiet_NaN();  ///< held-out accuracy (NaN: not evaluated)
  double tokens_per_s = 0, elapsed_s = 0, eta_s = 0;
  Index tokens = 0;
};

/// The fewest tokens a sample of `task` may have (its longest facts and question).
inline Index task_min_length(tasks::Task task) {
  auto longest = [](const auto& words) {
    std::size_t n = 0;
    for (std::string_view w : words) n = std::max(n, w.size());
    return Index(n);
  };
  const Index name = longest(tasks::kNames), verb = longest(tasks::kVerbs), place = longest(tasks::kPlaces), dir = longest(tasks::kDirections);
  if (task != tasks::Task::reasoning) return name + 1 + verb + Index(std::string_view(" to the .").size()) + place +  // fact
                                             Index(std::string_view("Where is ?").size()) + name;                   // question
  const Index fact = Index(std::string_view("The  is  of the .").size()) + 2 * place + dir;
  const Index question = std::max(Index(std::string_view("What is  of the ?").size()) + dir + place,
                                  Index(std::string_view("What is the   of?").size()) + place + dir);
  return 2 * fact + 1 + question;
}

/// Trains W (rmt::RecurrentWrapper<T> or rmt::ArmtWrapper<T>: visit_parameters, train_step,
/// segment_size, and rmt::save / rmt::load_parameters overloads) through the curriculum.
template <class W>
class CurriculumTrainer {
 public:
  using T = typename W::Scalar;
  /// Held-out accuracy in [0, 1] of the model on samples of up to `max_segments` segments.
  using HeldOut = std::function<double(const W& model, Index max_segments)>;

  CurriculumTrainer(W& model, const tasks::Corpus& corpus, CurriculumOptions options, HeldOut held_out)
      : model_(model), corpus_(corpus), options_(std::move(options)), held_out_(std::move(held_out)), grads_(model) {
    options_.validate();
    check(bool(held_out_), "rmt::CurriculumTrainer", "a held-out evaluation is needed (best checkpoint and stage ends)");
    const Index s = model_.segment_size(), need = task_min_length(options_.task) + tasks::max_answer_bytes();
    check(need <= s, "rmt::CurriculumTrainer", tasks::name(options_.task), " needs segments of at least ", need,
          " tokens (its longest facts, question and answer in one segment), got segment_size ", s);
  }

  const std::vector<CurriculumProgress>& history() const { return history_; }
  Gradients<T>& gradients() { return grads_; }
  /// Best held-out accuracy of the current stage so far (-1 before the first evaluation).
  double best_accuracy() const { return best_accuracy_; }

  /// Document length (before the answer) of the samples of `step` in a stage of `max_segments`:
  /// the number of segments is uniform in [1, max_segments] and the answer ends uniformly inside
  /// the last one (so the question may end a segment and the answer start the next; with
  /// CurriculumOptions::boundary_fraction that case is drawn more often).
  Index sample_length(Index stage, Index step) const {
    tasks::Rng rng(tasks::mix_seed(options_.seed ^ tasks::mix_seed(0x1E57'0000ull + std::uint64_t(stage) * 1'000'003u + std::uint64_t(step))));
    const Index s = model_.segment_size(), a = tasks::max_answer_bytes(), lo_min = task_min_length(options_.task);
    const Index n = rng.between(1, options_.stages[std::size_t(stage)].segments);
    const Index hi = n * s - a, lo = std::max(lo_min, (n - 1) * s + 1 - a);
    const Index length = rng.between(std::min(lo, hi), hi);
    if (options_.boundary_fraction == 0 || n == 1) return length;  // (no extra draw: the default stream stays as it was)
    // A boundary sample: the document ends within the answer's length of the previous segment's end.
    const double u = double(rng.between(0, (Index(1) << 30) - 1)) / double(Index(1) << 30);  // [0, 1)
    return u < options_.boundary_fraction ? rng.between(lo, (n - 1) * s) : length;
  }

  /// Segments of background before the samples of `step` of `stage` (CurriculumOptions::
  /// burn_in_segments): log-uniform in [0, burn_in_segments], so every depth scale is seen at the
  /// cost of a mean of about burn_in / ln(burn_in) segments.
  Index burn_in(Index stage, Index step) const {
    const Index most = options_.burn_in_segments;
    if (most == 0) return 0;
    tasks::Rng rng(tasks::mix_seed(options_.seed ^ tasks::mix_seed(0xB0B1'0000ull + std::uint64_t(stage) * 1'000'003u + std::uint64_t(step))));
    const double u = double(rng.between(0, (Index(1) << 30) - 1)) / double(Index(1) << 30);  // [0, 1)
    return std::min(most, Index(std::floor(std::pow(double(most + 2), u))) - 1);
  }

  /// The batch of `step` of `stage`, micro-batch `micro` of n_seqs sequences: the task's samples
  /// (answer included), each behind burn_in(stage, step) segments of its own background.
  TrainBatch batch(Index stage, Index step, Index micro, Index n_seqs) const {
    tasks::TaskOptions t;
    t.task = options_.task;
    t.questions = options_.questions;
    t.length = sample_length(stage, step);
    t.segment_size = model_.segment_size();
    const train::TaskSource src(corpus_, t, tasks::mix_seed(options_.seed + 0x5747'0000ull * std::uint64_t(stage + 1)), true,
                                options_.bindings);
    const train::Batch b = src.train_batch(step, micro, n_seqs);
    TrainBatch out;
    out.n_seqs = b.n_seqs;
    const Index prefix = burn_in(stage, step) * model_.segment_size(), n = b.seq_len;
    if (prefix == 0) {
      out.tokens = b.tokens, out.labels = b.labels, out.length = n;
      return out;
    }
    // Whole segments in front keep the sample's own segment boundaries (left- or right-aligned).
    out.length = prefix + n;
    out.tokens.resize(std::size_t(b.n_seqs * out.length));
    out.labels.assign(out.tokens.size(), train::kIgnore);
    for (Index q = 0; q < b.n_seqs; ++q) {
      tasks::BackgroundStream bg(corpus_, tasks::mix_seed(options_.seed ^ 0xB6B6'0000'0000ull ^
                                                          tasks::mix_seed(std::uint64_t(stage) << 40 ^ std::uint64_t(step) << 16 ^
                                                                          std::uint64_t(micro) << 8 ^ std::uint64_t(q))));
      const std::size_t at = std::size_t(q * out.length);
      for (Index i = 0; i < prefix; ++i) out.tokens[at + std::size_t(i)] = bg.next();
      std::copy_n(b.tokens.begin() + q * n, n, out.tokens.begin() + std::ptrdiff_t(at) + prefix);
      std::copy_n(b.labels.begin() + q * n, n, out.labels.begin() + std::ptrdiff_t(at) + prefix);
    }
    return out;
  }

  /// Runs (or resumes) every stage. `on_progress` gets every logged record.
  void run(const std::function<void(const CurriculumProgress&)>& on_progress = {}) {
    train::Collective* const c = options_.collective;
    if (options_.resume) resume();
    if (c) train::check_same(*c, train::parameter_fingerprint(grads_), "the weights at the start of training");
    const auto t0 = std::chrono::steady_clock::now();
    Index total_steps = 0;
    for (const auto& s : options_.stages) total_steps += s.steps;
    const Index first_step = step_;
    Index window_tokens = 0;
    auto window_t0 = t0;
    for (; stage_ < Index(options_.stages.size()); ++stage_) {
      const CurriculumStage& st = options_.stages[std::size_t(stage_)];
      if (!optimizer_) new_stage_optimizer();
      bool done = false;
      while (!done) {
        CurriculumProgress p = step();
        window_tokens += p.tokens - tokens_before_;
        tokens_before_ = p.tokens;
        const bool stage_over = stage_step_ >= st.steps;
        const bool eval = stage_step_ % options_.eval_every == 0 || stage_over;
        const bool last_stage = stage_ + 1 == Index(options_.stages.size());
        if (eval) {
          train::all_or_none(c, [&] {
            if (train::is_root(c)) p.held_out = held_out_(model_, last_stage && options_.final_eval_segments > 0 ? options_.final_eval_segments : st.segments);
          });
          if (c) c->broadcast(std::as_writable_bytes(std::span(&p.held_out, 1)), 0);
          if (p.held_out >= best_accuracy_) {  // ties: the later weights (lower learning rate)
            best_accuracy_ = p.held_out;
            keep_best();
          }
          done = stage_over || (!last_stage && stage_step_ >= options_.min_stage_steps && p.held_out >= options_.advance_accuracy);
        }
        if (eval || stage_step_ % options_.log_every == 0) {
          const auto now = std::chrono::steady_clock::now();
          const double window = std::chrono::duration<double>(now - window_t0).count();
          p.tokens_per_s = window > 0 ? double(window_tokens) / window : 0;
          window_tokens = 0, window_t0 = now;
          const double run_s = std::chrono::duration<double>(now - t0).count();
          p.elapsed_s = elapsed_before_ + run_s;
          const Index left = remaining_steps(st) ;
          p.eta_s = step_ > first_step ? run_s / double(step_ - first_step) * double(left) : 0;
          history_.push_back(p);
          if (on_progress) on_progress(p);
          train::all_or_none(c, [&] {
            if (train::is_root(c)) write_curves();
          });
        }
        if (done) {
          // The next stage starts from this one's best weights (rmt.md 3: --model_cpt of model_best).
          restore_best();
          stage_step_ = 0;
          best_accuracy_ = -1;
          optimizer_.reset();
          if (!options_.out_dir.empty()) {
            elapsed_at_checkpoint_ = elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (stage_ + 1 < Index(options_.stages.size())) {
              ++stage_;  // the checkpoint describes the start of the next stage
              new_stage_optimizer();
              checkpoint();
              --stage_;
              optimizer_.reset();
            } else {
              train::all_or_none(c, [&] {
                if (train::is_root(c)) save(model_, options_.out_dir / "final");
              });
            }
          }
        } else if (!options_.out_dir.empty() && stage_step_ % options_.checkpoint_every == 0) {
          elapsed_at_checkpoint_ = elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          checkpoint();
        }
      }
      (void)total_steps;
    }
  }

 private:
  Index micro() const {
    if (options_.micro_batch > 0) return options_.micro_batch;
    const Index workers = Index(num_threads()) * train::ranks(options_.collective);
    return std::max<Index>(1, (options_.batch + workers - 1) / workers);
  }
  Index remaining_steps(const CurriculumStage& st) const {
    Index left = st.steps - stage_step_;
    for (std::size_t i = std::size_t(stage_) + 1; i < options_.stages.size(); ++i) left += options_.stages[i].steps;
    return left;
  }
  train::Schedule schedule() const {
    const Index total = options_.stages[std::size_t(stage_)].steps;
    return train::Schedule{options_.lr, options_.min_lr, std::min(options_.warmup, total), total, options_.decay};
  }
  void new_stage_optimizer() { optimizer_ = std::make_unique<train::AdamW<T>>(grads_, options_.adamw); }

  CurriculumProgress step() {
    train::Collective* const c = options_.collective;
    const Index mb = micro(), n_micro = (options_.batch + mb - 1) / mb;
    ++stage_step_;
    ++step_;
    // Micro-batches (this rank's: j % ranks == rank) run in parallel, each into its own gradients,
    // summed in a fixed order: the result does not depend on the thread count.
    std::vector<TrainBatch> batches;
    double count = 0;  // labelled positions of the whole batch (every rank's)
    train::all_or_none(c, [&] {
      for (Index j = 0; j < n_micro; ++j)
        if (train::owns(c, j)) {
          batches.push_back(batch(stage_, stage_step_, j, std::min(mb, options_.batch - j * mb)));
          count += double(batches.back().count(Layout::decoder));
        }
    });
    if (c) c->sum(std::span(&count, 1));
    check(count > 0, "rmt::CurriculumTrainer", "step ", step_, ": the batch has no labelled position");
    const Index n_local = Index(batches.size());
    while (Index(micro_grads_.size()) < n_local) micro_grads_.emplace_back(model_), micro_bufs_.emplace_back();
    std::vector<StepStats> stats(static_cast<std::size_t>(n_local));
    BpttOptions bo = options_.bptt;
    bo.accuracy = true;
    if (const Index d = burn_in(stage_, stage_step_); d > 0) {
      // No gradient into the burn-in: BPTT through the sample's own segments (or the user's k2 if shorter).
      const Index s = model_.segment_size(), n = sample_length(stage_, stage_step_) + tasks::max_answer_bytes();
      const Index own = Index(split(d * s + n, s, model_.config().alignment).size()) - d;
      bo.k2 = bo.k2 == -1 ? own : std::min(bo.k2, own);
    }
    train::all_or_none(c, [&] {
      parallel_for(0, n_local, [&](Index j) {
        micro_grads_[std::size_t(j)].zero();
        stats[std::size_t(j)] = model_.train_step(batches[std::size_t(j)], &micro_grads_[std::size_t(j)], micro_bufs_[std::size_t(j)],
                                                  T(1.0 / count), bo);
      });
    });
    grads_.zero();
    StepStats total;
    for (Index j = 0; j < n_local; ++j) grads_ += micro_grads_[std::size_t(j)], total += stats[std::size_t(j)];
    if (c) {
      reducer_.sum(grads_, *c);
      // Every rank's statistics; segments is a maximum over the micro-batches, and every rank's
      // micro-batches of a step have the same length.
      double sums[5] = {total.loss_sum, double(total.count), double(total.correct), double(total.sequences), double(total.tokens)};
      c->sum(sums);
      total.loss_sum = sums[0], total.count = Index(sums[1]), total.correct = Index(sums[2]), total.sequences = Index(sums[3]);
      total.tokens = Index(sums[4]);
    }
    CurriculumProgress p;
    p.step = step_, p.stage = stage_, p.stage_step = stage_step_;
    p.max_segments = options_.stages[std::size_t(stage_)].segments;
    p.segments = total.segments;
    p.loss = total.mean_loss();
    p.train_accuracy = total.sequences ? double(total.correct) / double(total.sequences) : 0;
    const std::string bad = grads_.first_non_finite();
    if (!std::isfinite(p.loss) || !bad.empty())
      fail("rmt::CurriculumTrainer", "step ", step_, ": ", !std::isfinite(p.loss) ? "the loss is not finite" : "the gradient of " + bad + " is not finite",
           "; stopped before updating the weights (last checkpoint: ", options_.out_dir.empty() ? "none" : (options_.out_dir / "checkpoint").string(), ")");
    p.lr = schedule().at(stage_step_);
    p.grad_norm = optimizer_->step(p.lr).norm;
    tokens_ += total.tokens;
    p.tokens = tokens_;
    return p;
  }

  void keep_best() {
    best_.clear();
    model_.visit_parameters([&](const std::string&, Tensor<T>& t) { best_.push_back(t.copy()); });
    train::all_or_none(options_.collective, [&] {
      if (!options_.out_dir.empty() && train::is_root(options_.collective)) save(model_, options_.out_dir / "best");
    });
  }
  void restore_best() {
    if (best_.empty()) return;
    std::size_t i = 0;
    model_.visit_parameters([&](const std::string&, Tensor<T>& t) { copy<T>(best_[i++].view(), t.view()); });
  }

  // out_dir/checkpoint: the model, the optimizer and where the curriculum stands (rank 0 writes the
  // weights every rank holds, checked first).
  void checkpoint() {
    train::Collective* const c = options_.collective;
    if (c) train::check_same(*c, train::parameter_fingerprint(grads_), "the weights at step " + std::to_string(step_));
    train::all_or_none(c, [&] {
      if (train::is_root(c)) write_checkpoint();
    });
  }
  void write_checkpoint() {
    json::Value state = json::Value::object();
    state.set("stage", json::Value(std::int64_t(stage_)));
    state.set("stage_step", json::Value(std::int64_t(stage_step_)));
    state.set("global_step", json::Value(std::int64_t(step_)));
    state.set("tokens", json::Value(std::int64_t(tokens_)));
    state.set("elapsed_s", json::Value(elapsed_at_checkpoint_));
    state.set("best_accuracy", json::Value(best_accuracy_));
    state.set("seed", json::Value(std::int64_t(options_.seed)));
    state.set("task", std::string(tasks::name(options_.task)));
    state.set("questions", std::string(tasks::name(options_.questions)));
    state.set("bindings", json::Value(options_.bindings));
    train::ModelIO<T> io;
    io.save = [&](const Decoder<T>&, const std::filesystem::path& d) { save(model_, d); };
    train::save_checkpoint<T>(options_.out_dir / "checkpoint", io, model_.backbone(), *optimizer_, std::move(state));
  }
  // Every rank reads the checkpoint; rank 0's step and weights must be everyone's.
  void resume() {
    train::all_or_none(options_.collective, [&] { resume_here(); });
    if (train::Collective* c = options_.collective) {
      const std::uint64_t step = std::uint64_t(step_);
      train::check_same(*c, train::fingerprint(&step, sizeof step, train::parameter_fingerprint(grads_)),
                        "the resumed step and weights (every rank must see the same " + (options_.out_dir / "checkpoint").string() + ")");
    }
  }
  void resume_here() {
    const std::filesystem::path dir = train::resumable_checkpoint(options_.out_dir / "checkpoint");
    if (dir.empty()) return;
    const json::Value state = read_json_file(dir / "trainer.json");
    auto integer = [&](const char* k) { return Index(state.at(k).as_integer(k)); };
    check(std::string(tasks::name(options_.task)) == state.at("task").as_string("task"), dir.string(), "checkpoint of task ",
          state.at("task").as_string("task"), ", this run trains ", tasks::name(options_.task));
    // Checkpoints written before question forms existed trained on both.
    const std::string forms = state.contains("questions") ? state.at("questions").as_string("questions") : "both";
    check(std::string(tasks::name(options_.questions)) == forms, dir.string(), "checkpoint of ", forms, " questions, this run trains ",
          tasks::name(options_.questions));
    // Checkpoints written before binding labels existed trained without them.
    const bool bindings = state.contains("bindings") && state.at("bindings").as_bool("bindings");
    check(bindings == options_.bindings, dir.string(), "checkpoint trained ", bindings ? "with" : "without", " binding labels, this run ",
          options_.bindings ? "with" : "without");
    stage_ = integer("stage"), stage_step_ = integer("stage_step"), step_ = integer("global_step"), tokens_ = tokens_before_ = integer("tokens");
    check(stage_ >= 0 && stage_ < Index(options_.stages.size()), dir.string(), "checkpoint at stage ", stage_, " of a curriculum of ",
          options_.stages.size());
    elapsed_before_ = elapsed_at_checkpoint_ = state.at("elapsed_s").as_number("elapsed_s");
    best_accuracy_ = state.at("best_accuracy").as_number("best_accuracy");
    load_parameters(model_, dir);
    new_stage_optimizer();
    optimizer_->load(dir / "optimizer.safetensors");
    check(optimizer_->step_count() == stage_step_, dir.string(), "optimizer step ", optimizer_->step_count(), " disagrees with stage step ",
          stage_step_);
    if (best_accuracy_ >= 0 && std::filesystem::exists(options_.out_dir / "best" / "config.json")) {
      // The stage's best weights, then back to the checkpoint's.
      load_parameters(model_, options_.out_dir / "best");
      best_.clear();
      model_.visit_parameters([&](const std::string&, Tensor<T>& t) { best_.push_back(t.copy()); });
      load_parameters(model_, dir);
    }
    read_curves();
  }

  static constexpr const char* kCsvHeader =
      "step,stage,stage_step,max_segments,segments,lr,loss,train_accuracy,grad_norm,held_out_accuracy,tokens,tokens_per_s,elapsed_s";
  void write_curves() const {
    if (options_.out_dir.empty()) return;
    std::filesystem::create_directories(options_.out_dir);
    const std::filesystem::path csv = options_.out_dir / "curriculum.csv";
    std::ofstream f(csv, std::ios::trunc);
    f << kCsvHeader << '\n';
    for (const auto& p : history_)
      f << p.step << ',' << p.stage << ',' << p.stage_step << ',' << p.max_segments << ',' << p.segments << ',' << p.lr << ',' << p.loss << ','
        << p.train_accuracy << ',' << p.grad_norm << ',' << p.held_out << ',' << p.tokens << ',' << p.tokens_per_s << ',' << p.elapsed_s
        << '\n';
    check(bool(f), csv.string(), "write failed");
    svg::Series loss{"training loss (nats per answer byte)", svg::palette(0), false, {}};
    svg::Series train_acc{"training batch (argmax of every answer byte)", svg::palette(0), true, {}};
    svg::Series held{"held-out (likelihood of the 6 answers)", svg::palette(1), false, {}};
    for (const auto& p : history_) {
      loss.points.push_back({double(p.step), p.loss});
      train_acc.points.push_back({double(p.step), p.train_accuracy});
      if (std::isfinite(p.held_out)) held.points.push_back({double(p.step), p.held_out});
    }
    svg::chart((options_.out_dir / "curriculum_loss.svg").string(), "training loss", {"step"}, {"nats per answer byte", true}, {loss});
    svg::chart((options_.out_dir / "curriculum_accuracy.svg").string(), "accuracy", {"step"}, {"accuracy"}, {train_acc, held});
  }
  void read_curves() {
    history_.clear();
    std::ifstream f(options_.out_dir / "curriculum.csv");
    std::string line;
    if (!std::getline(f, line) || line != kCsvHeader) return;
    while (std::getline(f, line)) {
      std::vector<std::string> v;
      std::stringstream in(line);
      for (std::string cell; std::getline(in, cell, ',');) v.push_back(cell);
      if (v.size() != 13) continue;
      CurriculumProgress p;
      p.step = std::stoll(v[0]), p.stage = std::stoll(v[1]), p.stage_step = std::stoll(v[2]), p.max_segments = std::stoll(v[3]);
      p.segments = std::stoll(v[4]), p.lr = std::stod(v[5]), p.loss = std::stod(v[6]), p.train_accuracy = std::stod(v[7]);
      p.grad_norm = std::stod(v[8]);
      p.held_out = v[9].find("nan") != std::string::npos ? std::numeric_limits<double>::quiet_NaN() : std::stod(v[9]);
      p.tokens = std::stoll(v[10]), p.tokens_per_s = std::stod(v[11]), p.elapsed_s = std::stod(v[12]);
      if (p.step <= step_) history_.push_back(p);
    }
  }

  W& model_;
  const tasks::Corpus& corpus_;
  CurriculumOptions options_;
  HeldOut held_out_;
  Gradients<T> grads_;
  train::GradientReducer<T> reducer_;
  std::unique_ptr<train::AdamW<T>> optimizer_;
  std::vector<Gradients<T>> micro_grads_;
  std::vector<typename W::TrainBuffers> micro_bufs_;
  std::vector<Tensor<T>> best_;
  std::vector<CurriculumProgress> history_;
  Index stage_ = 0, stage_step_ = 0, step_ = 0, tokens_ = 0, tokens_before_ = 0;
  double best_accuracy_ = -1, elapsed_before_ = 0, elapsed_at_checkpoint_ = 0;
};

}  // namespace rmt
ENGRAM_NAMESPACE_END
