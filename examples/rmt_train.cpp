// engram-rmt-train: trains a small byte-level RMT or ARMT on one of the scaling report's memory
// tasks (fact memorization, fact detection, reasoning over two facts) by curriculum: one segment
// first, more segments per stage as the held-out accuracy converges. Progress per step (stage,
// segments, loss, accuracy, tokens/s, ETA), CSV + SVG curves, checkpoints and --resume; the result
// (OUT/best) loads with rmt::load (RMT) or rmt::load_armt (ARMT) and engram-eval.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "ranks.hpp"
#include "engram/eval/memory_tasks.hpp"
#include "engram/eval/rmt_reader.hpp"
#include "engram/io/hf.hpp"
#include "engram/nn/init.hpp"
#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/curriculum.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/save.hpp"

using namespace engram;

namespace {

using cli::duration;

std::vector<Index> parse_list(const std::string& text, const char* option) {
  std::vector<Index> v;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      std::size_t used = 0;
      const long long x = std::stoll(item, &used);
      if (used != item.size() || x < 1) throw std::invalid_argument(item);
      v.push_back(Index(x));
    } catch (const std::exception&) {
      cli::usage_error(option, "expected a comma-separated list of positive integers, got \"" + text + "\"");
    }
  }
  if (v.empty()) cli::usage_error(option, "empty list");
  return v;
}

struct Options {
  std::string task = "fact_memorization", questions = "both", kind = "rmt", arch = "gpt2", mask = "causal", out, background, init, backbone, stages = "1,2,4,6,8",
              stage_steps = "600";
  Index d_model = 64, layers = 2, heads = 4, d_ff = 0, segment = 128, memory = 4, d_mem = 16, batch = 16, micro_batch = 0, warmup = 50,
        min_stage_steps = 100, select_segments = 0, eval_every = 100, eval_samples = 64, log_every = 10, checkpoint_every = 100, k2 = -1, burn_in = 0;
  double boundary = 0, lr = 2e-3, min_lr = 2e-4, weight_decay = 0.01, clip = 1.0, clip_value = 0.0, advance = 0.98, init_std = 0.02;
  bool resume = false, bind = false;
};

ModelConfig backbone_config(const Options& o, Index positions) {
  constexpr Index vocab = tasks::ByteTokenizer::vocab_size;
  if (o.d_model % o.heads != 0) cli::usage_error("--heads", std::to_string(o.heads) + " heads do not divide --d-model " + std::to_string(o.d_model));
  ModelConfig c;
  if (o.arch == "gpt2") {
    c = ModelConfig::gpt2(vocab, o.d_model, o.layers, o.heads, positions);
    if (o.d_ff > 0) c.d_ff = o.d_ff;
  } else {
    const Index d_ff = o.d_ff > 0 ? o.d_ff : (8 * o.d_model / 3 + 31) / 32 * 32;  // SwiGLU with a 4d MLP's parameters
    c = ModelConfig::llama(vocab, o.d_model, o.layers, o.heads, o.heads, d_ff);
    c.max_positions = positions;
    c.tie_embeddings = true;
  }
  c.validate();
  return c;
}

template <class W>
int run_training(W& model, const Options& o, const tasks::Corpus& corpus, examples::Ranks& ranks) {
  rmt::CurriculumOptions c;
  c.task = tasks::parse_task(o.task);
  c.questions = tasks::parse_questions(o.questions);
  c.bindings = o.bind;
  c.boundary_fraction = o.boundary;
  const auto segments = parse_list(o.stages, "--stages");
  auto steps = parse_list(o.stage_steps, "--stage-steps");
  if (steps.size() == 1) steps.assign(segments.size(), steps[0]);
  if (steps.size() != segments.size())
    cli::usage_error("--stage-steps", "needs one budget, or one per stage (" + std::to_string(segments.size()) + "), got " + std::to_string(steps.size()));
  c.stages.clear();
  for (std::size_t i = 0; i < segments.size(); ++i) c.stages.push_back({segments[i], steps[i]});
  c.min_stage_steps = o.min_stage_steps, c.advance_accuracy = o.advance, c.final_eval_segments = o.select_segments;
  c.batch = o.batch, c.micro_batch = o.micro_batch;
  c.lr = o.lr, c.min_lr = o.min_lr, c.warmup = o.warmup;
  c.adamw.weight_decay = o.weight_decay, c.adamw.clip_norm = o.clip, c.adamw.clip_value = o.clip_value, c.adamw.beta2 = 0.99;
  c.bptt.k2 = o.k2;
  c.burn_in_segments = o.burn_in;
  c.log_every = o.log_every, c.eval_every = o.eval_every, c.checkpoint_every = o.checkpoint_every;
  c.out_dir = o.out, c.resume = o.resume, c.seed = cli::seed();
  c.collective = ranks.collective();
  const Index s = model.segment_size();
  // Held-out model selection: samples of the eval stream beyond those engram-eval reports
  // (first_sample 10^6), at the stage's longest length.
  auto held_out = [&](const W& m, Index max_segments) {
    tasks::TaskOptions t;
    t.task = c.task;
    t.questions = c.questions;
    t.length = max_segments * s - tasks::max_answer_bytes();
    t.segment_size = s;
    const eval::MemoryReader<W> reader(m);
    eval::TaskEvalOptions eo;
    eo.samples = o.eval_samples, eo.first_sample = 1'000'000;
    return eval::score_task(reader, corpus, t, eo).accuracy;
  };
  // --init: the weights of an earlier run (a curriculum continued to longer stages); the shapes must
  // match this command line's model (load_parameters names the first parameter that differs).
  if (!o.init.empty()) load_parameters(model, o.init);
  rmt::CurriculumTrainer<W> trainer(model, corpus, c, held_out);
  Index params = 0;
  model.visit_parameters([&](const std::string&, Tensor<float>& t) { params += t.numel(); });
  if (ranks.root()) {
    std::printf("engram-rmt-train: %s, %lld parameters; %s; stages %s x %s steps, batch %lld, %d threads\n", model.describe().c_str(),
                (long long)params, o.task.c_str(), o.stages.c_str(), o.stage_steps.c_str(), (long long)o.batch, cli::threads());
    if (c.collective)
      std::printf("data-parallel over %s: micro-batch j on rank j %% %d, gradients summed, held-out accuracy on rank 0\n",
                  ranks.describe().c_str(), ranks.size());
  }
  if (ranks.root() && !o.init.empty()) std::printf("weights from %s\n", o.init.c_str());
  if (ranks.root() && !o.backbone.empty()) std::printf("backbone from %s, memory fresh\n", o.backbone.c_str());
  std::fflush(stdout);
  trainer.run([&](const rmt::CurriculumProgress& p) {
    if (!ranks.root()) return;
    std::printf("step %6lld  stage %lld (<= %lld segments) step %5lld  segments %2lld  loss %.4f  acc %.3f", (long long)p.step,
                (long long)p.stage + 1, (long long)p.max_segments, (long long)p.stage_step, (long long)p.segments, p.loss, p.train_accuracy);
    if (std::isfinite(p.held_out)) std::printf("  held-out %.3f", p.held_out);
    std::printf("  lr %.2e  |g| %.2f  %.0f tok/s  %s elapsed, ETA %s\n", p.lr, p.grad_norm, p.tokens_per_s, duration(p.elapsed_s).c_str(),
                duration(p.eta_s).c_str());
    std::fflush(stdout);
  });
  if (!o.out.empty() && ranks.root()) std::printf("best checkpoint: %s\n", (std::filesystem::path(o.out) / "best").string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  examples::Ranks ranks(argc, argv);  // MPI ranks under mpirun (data-parallel), else one process
  return ranks.finish(cli::run(
      argc, argv,
      "engram-rmt-train: trains a byte-level RMT or ARMT on a memory task by curriculum over segments (one segment first, more as "
      "the held-out accuracy converges); writes OUT/best (the best checkpoint of the last stage, loadable with rmt::load or "
      "rmt::load_armt), OUT/checkpoint (for --resume), OUT/curriculum.csv and OUT/curriculum_*.svg.",
      [&](CLI::App& app) {
        app.add_option("--out", o.out, "output directory")->required();
        app.add_option("--task", o.task, "memory task")->check(CLI::IsMember({"fact_memorization", "fact_detection", "reasoning"}));
        app.add_option("--questions", o.questions, "reasoning: qa4 question forms, both (bAbI's mix), direct or inverse")
            ->check(CLI::IsMember({"both", "direct", "inverse"}));
        app.add_flag("--bind", o.bind,
                     "reasoning: also label each fact's direction with its place and the question's direction with the answer "
                     "(intermediate supervision; without it training stalls at one of the two places)");
        app.add_option("--kind", o.kind, "memory: rmt (memory tokens carried between segments) or armt (associative memory per layer)")
            ->check(CLI::IsMember({"rmt", "armt"}));
        app.add_option("--background", o.background, "background text of the samples (default: Debian's fortunes)")->check(cli::regular_file());
        app.add_option("--arch", o.arch, "backbone block layout")->check(CLI::IsMember({"gpt2", "llama"}));
        app.add_option("--d-model", o.d_model, "width")->check(CLI::Range(Index(8), Index(4096)));
        app.add_option("--layers", o.layers, "blocks")->check(CLI::Range(Index(1), Index(64)));
        app.add_option("--heads", o.heads, "attention heads")->check(CLI::Range(Index(1), Index(64)));
        app.add_option("--d-ff", o.d_ff, "feed-forward width (0: 4 d for gpt2, 8/3 d for llama)")->check(CLI::Range(Index(0), Index(65536)));
        app.add_option("--segment", o.segment, "content tokens per segment")->check(CLI::Range(Index(16), Index(8192)));
        app.add_option("--memory", o.memory, "memory tokens")->check(CLI::Range(Index(1), Index(256)));
        app.add_option("--memory-mask", o.mask, "RMT: attention among memory rows")->check(CLI::IsMember({"causal", "bidirectional"}));
        app.add_option("--d-mem", o.d_mem, "ARMT: width of the associative keys before DPFP (d_key = 6 d_mem)")->check(CLI::Range(Index(1), Index(1024)));
        app.add_option("--stages", o.stages, "maximum segments of each curriculum stage, e.g. 1,2,4,6,8");
        app.add_option("--stage-steps", o.stage_steps, "step budget of every stage, or one per stage");
        app.add_option("--min-stage-steps", o.min_stage_steps, "steps before a stage may end on accuracy")->check(CLI::Range(Index(0), Index(1) << 30));
        app.add_option("--select-segments", o.select_segments, "held-out length (segments) of the last stage's checkpoint selection (0: its own)")
            ->check(CLI::Range(Index(0), Index(1) << 20));
        app.add_option("--advance", o.advance, "held-out accuracy that ends a stage early (> 1: never; the last stage runs its budget)")->check(cli::range(0.0, 2.0));
        app.add_option("--batch", o.batch, "sequences per optimizer step (all ranks together under mpirun)")->check(CLI::Range(Index(1), Index(4096)));
        app.add_option("--micro-batch", o.micro_batch, "sequences per forward/backward, run in parallel (0: batch / threads, / ranks under mpirun)")
            ->check(CLI::Range(Index(0), Index(4096)));
        app.add_option("--lr", o.lr, "peak learning rate of each stage")->check(cli::range(1e-8, 1.0));
        app.add_option("--min-lr", o.min_lr, "learning rate at the end of each stage")->check(cli::range(0.0, 1.0));
        app.add_option("--warmup", o.warmup, "warm-up steps of each stage")->check(CLI::Range(Index(0), Index(1) << 30));
        app.add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay (matrices only)")->check(cli::range(0.0, 10.0));
        app.add_option("--clip", o.clip, "clip the global gradient norm (0: off)")->check(cli::range(0.0, 1e6));
        app.add_option("--clip-value", o.clip_value, "clip every gradient entry to [-v, v] (0: off)")->check(cli::range(0.0, 1e6));
        app.add_option("--k2", o.k2, "truncated BPTT: backward through the last k2 segments only (-1: full BPTT)")
            ->check(CLI::Range(Index(-1), Index(1) << 20));
        app.add_option("--burn-in", o.burn_in,
                       "before each step's samples, D segments of background read without gradient, D log-uniform in [0, N] "
                       "(trains writing a fact after a long read; 0: off)")
            ->check(CLI::Range(Index(0), Index(1) << 20));
        app.add_option("--boundary", o.boundary,
                       "fraction of samples of 2+ segments whose document ends within the answer's length of a segment end, so the "
                       "answer is read from memory alone (0: the natural rate, about 10 / --segment)")
            ->check(cli::range(0.0, 1.0));
        app.add_option("--init-std", o.init_std, "standard deviation of the initial weights")->check(cli::range(1e-6, 1.0));
        app.add_option("--eval-samples", o.eval_samples, "held-out samples per evaluation")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--eval-every", o.eval_every, "held-out accuracy every N steps of a stage")->check(CLI::Range(Index(1), Index(1) << 30));
        app.add_option("--log-every", o.log_every, "progress line every N steps")->check(CLI::Range(Index(1), Index(1) << 30));
        app.add_option("--checkpoint-every", o.checkpoint_every, "checkpoint every N steps")->check(CLI::Range(Index(1), Index(1) << 30));
        app.add_flag("--resume", o.resume, "continue from OUT/checkpoint if it exists");
        app.add_option("--backbone", o.backbone,
                       "start the backbone from this trained byte-level decoder (engram-train's OUT; its config sets --arch, --d-model, "
                       "--layers, --heads and --d-ff), the memory fresh: as the reference scripts start from a pretrained model")
            ->check(CLI::ExistingDirectory);
        app.add_option("--init", o.init, "start from the weights of this checkpoint (same model options; e.g. a previous run's OUT/best)")
            ->check(CLI::ExistingDirectory);
      },
      [&] {
        if (o.min_lr > o.lr) cli::usage_error("--min-lr", "must not exceed --lr");
        if (o.micro_batch > o.batch) cli::usage_error("--micro-batch", "must not exceed --batch");
        if (o.k2 == 0) cli::usage_error("--k2", "must be -1 (full BPTT) or >= 1");
        if (o.bind && o.task != "reasoning") cli::usage_error("--bind", "labels the reasoning task's facts; --task is " + o.task);
        const Index need = rmt::task_min_length(tasks::parse_task(o.task)) + tasks::max_answer_bytes();
        if (o.segment < need)
          cli::usage_error("--segment", o.task + " needs segments of at least " + std::to_string(need) + " tokens (facts, question and answer)");
        const tasks::Corpus corpus = o.background.empty() ? tasks::Corpus::fortunes() : tasks::Corpus::from_path(o.background);
        if (!o.backbone.empty() && !o.init.empty()) cli::usage_error("--backbone", "and --init both give the weights: choose one");
        // The backbone: fresh (the command line's size) or a trained decoder (its own size).
        auto make_backbone = [&](Index positions) {
          if (o.backbone.empty()) {
            auto bb = std::make_shared<Decoder<float>>(Decoder<float>::create(backbone_config(o, positions)));
            init_for_training(*bb, cli::seed(), o.init_std);
            return bb;
          }
          auto bb = std::make_shared<Decoder<float>>(hf::load_decoder<float>(o.backbone));
          ModelConfig& c = bb->config;
          if (c.vocab_size != tasks::ByteTokenizer::vocab_size)
            cli::usage_error("--backbone", "needs a byte-level model (vocabulary " + std::to_string(tasks::ByteTokenizer::vocab_size) + "), " +
                                               o.backbone + " has " + std::to_string(c.vocab_size));
          if (c.positions == PositionKind::learned && c.max_positions < positions)
            cli::usage_error("--backbone", o.backbone + " has " + std::to_string(c.max_positions) + " learned positions, the segment with its memory needs " +
                                               std::to_string(positions) + " (train it with --context " + std::to_string(positions) + ")");
          c.max_positions = std::max(c.max_positions, positions);  // RoPE: informational, any length
          return bb;
        };
        if (o.kind == "rmt") {
          auto bb = make_backbone(o.segment + 2 * o.memory);
          auto memory = rmt::hf_initial_memory(*bb, o.memory, cli::seed() + 1);
          rmt::RecurrentWrapper<float> model(rmt::MemoryCell<float>(
              bb, rmt::Config::decoder(o.memory, o.segment, o.mask == "causal" ? rmt::MemoryMask::causal : rmt::MemoryMask::bidirectional),
              std::move(memory)));
          return run_training(model, o, corpus, ranks);
        }
        if (o.mask != "causal") cli::usage_error("--memory-mask", "applies to --kind rmt (ARMT's memory tokens are write-only)");
        auto bb = make_backbone(o.segment + o.memory);
        rmt::ArmtConfig ac = rmt::ArmtConfig::make(o.memory, o.segment, o.d_mem);
        rmt::ArmtWrapper<float> model(bb, ac, rmt::hf_initial_memory(*bb, o.memory, cli::seed() + 1),
                                      rmt::init_associative<float>(*bb, ac, cli::seed() + 2));
        return run_training(model, o, corpus, ranks);
      }));
}
