// engram-train: trains a byte-level language model (Llama- or GPT-2-style with full or sliding-window
// attention, or a TTT-Linear/TTT-MLP model on the Transformer or Mamba backbone) on a text corpus (by
// default the King James Bible of Debian's bible-kjv) or on a long-context memory task, with AdamW,
// warm-up and cosine decay; progress on one line, CSV + SVG curves, checkpoints and --resume. The
// result is a Hugging Face model directory (ttt-lm-pytorch's layout for TTT) that engram-generate
// and engram-eval read.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli.hpp"
#include "ranks.hpp"
#include "engram/nn/init.hpp"
#include "engram/tasks/corpus.hpp"
#include "engram/train/trainer.hpp"
#include "engram/ttt/init.hpp"
#include "engram/ttt/save.hpp"

using namespace engram;

namespace {

using cli::duration;

struct ModelOptions {
  std::string arch = "llama";
  std::string mixer = "attention";
  std::string backbone = "transformer";
  Index window = 256;
  Index d_model = 256, layers = 4, heads = 4, kv_heads = 0, d_ff = 0, context = 256;
  double init_std = 0.02;
};

ModelConfig model_config(const ModelOptions& o) {
  constexpr Index vocab = tasks::ByteTokenizer::vocab_size;
  if (o.d_model % o.heads != 0) cli::usage_error("--heads", std::to_string(o.heads) + " heads do not divide --d-model " + std::to_string(o.d_model));
  ModelConfig c;
  if (o.arch == "gpt2") {
    c = ModelConfig::gpt2(vocab, o.d_model, o.layers, o.heads, o.context);
    if (o.d_ff > 0) c.d_ff = o.d_ff;
  } else {
    const Index kv = o.kv_heads > 0 ? o.kv_heads : o.heads;
    if (o.heads % kv != 0) cli::usage_error("--kv-heads", std::to_string(kv) + " KV heads do not divide " + std::to_string(o.heads) + " heads");
    // SwiGLU at 8/3 d (rounded to 32) has the parameters of a 4d plain MLP.
    const Index d_ff = o.d_ff > 0 ? o.d_ff : (8 * o.d_model / 3 + 31) / 32 * 32;
    c = ModelConfig::llama(vocab, o.d_model, o.layers, o.heads, kv, d_ff);
    c.max_positions = std::max<Index>(o.context, 1);
    c.tie_embeddings = true;
  }
  if (o.mixer == "swa") {
    if (o.arch != "llama") cli::usage_error("--mixer", "sliding-window attention is a Llama-style (Mistral) model: use --arch llama");
    c.sliding_window = o.window;
  }
  c.validate();
  return c;
}

bool is_ttt(const ModelOptions& o) { return o.mixer == "ttt-linear" || o.mixer == "ttt-mlp"; }

// A TTT model of the same width, depth and SwiGLU as the Llama-style one (ttt.md 6.2: mini-batch 16,
// eta_base 1.0 for TTT-Linear and 0.1 for TTT-MLP).
ttt::ModelSpec ttt_spec(const ModelOptions& o) {
  if (o.arch != "llama") cli::usage_error("--mixer", "TTT blocks are Llama-style (RMSNorm, SwiGLU): use --arch llama");
  if (o.kv_heads > 0 && o.kv_heads != o.heads) cli::usage_error("--kv-heads", "TTT layers have no key/value heads");
  const ModelConfig c = model_config(o);
  const ttt::Kind kind = o.mixer == "ttt-linear" ? ttt::Kind::linear : ttt::Kind::mlp;
  ttt::ModelSpec s;
  s.layer = o.backbone == "mamba" ? ttt::Config::mamba(kind, o.d_model, o.heads) : ttt::Config::transformer(kind, o.d_model, o.heads);
  s.vocab_size = c.vocab_size, s.n_layers = c.n_layers, s.d_ff = c.d_ff, s.rms_eps = c.norm_eps, s.tie_embeddings = c.tie_embeddings;
  s.validate();
  return s;
}

// Analytic training FLOPs per token (forward + backward, LM head included) from the layers' FLOP
// counters, over one training sequence; the model is not changed.
double training_flops_per_token(const Decoder<float>& model, const train::BatchSource& source) {
  Gradients<float> grads(const_cast<Decoder<float>&>(model));
  train::StepBuffers<float> buf;
  const train::Batch b = source.train_batch(0, 0, 1);
  train::lm_step<float>(model, b, &grads, buf, 1.0f / float(b.rows()));
  return buf.flops.total() / double(b.rows());
}

}  // namespace

int main(int argc, char** argv) {
  ModelOptions mo;
  std::string out, corpus = "kjv", task = "lm", background, init;
  Index task_length = 1024, steps = 2000, batch = 16, micro_batch = 0, warmup = 100, log_every = 10, eval_every = 100,
        eval_batches = 8, checkpoint_every = 200;
  double lr = 3e-3, min_lr = 3e-4, weight_decay = 0.1, clip = 1.0, clip_value = 0.0, held_out = 0.02, beta2 = 0.95;
  std::string decay = "cosine";
  bool resume = false, checkpointing = false;
  CLI::Option* context_option = nullptr;
  examples::Ranks ranks(argc, argv);  // MPI ranks under mpirun (data-parallel), else one process
  return ranks.finish(cli::run(
      argc, argv,
      "engram-train: trains a byte-level language model (Llama- or GPT-2-style) with AdamW on a text corpus (default: the King "
      "James Bible of Debian's bible-kjv) or on a memory task; writes OUT/checkpoint (a Hugging Face model directory), "
      "OUT/train.csv and OUT/train.svg; --resume continues a run bit-identically.",
      [&](CLI::App& app) {
        app.add_option("--out", out, "output directory (checkpoint/, train.csv, train.svg)")->required();
        app.add_option("--corpus", corpus, "training text: a file, or 'kjv' (Debian's bible-kjv, verse references removed)");
        app.add_option("--held-out", held_out, "fraction of the corpus, at its end, kept for the held-out loss")->check(cli::range(0.0, 0.5));
        app.add_option("--task", task, "what to learn: lm (next byte of the corpus) or a memory task (loss on the answer)")
            ->check(CLI::IsMember({"lm", "fact_memorization", "fact_detection", "reasoning"}));
        app.add_option("--task-length", task_length, "tokens per task sample, question included")->check(CLI::Range(Index(64), Index(1) << 20));
        app.add_option("--background", background, "background text of the memory tasks (default: Debian's fortunes)")->check(cli::regular_file());
        app.add_option("--arch", mo.arch, "block layout")->check(CLI::IsMember({"llama", "gpt2"}));
        app.add_option("--mixer", mo.mixer, "sequence mixer: full causal attention, sliding-window attention (swa, --window keys), or a TTT layer")
            ->check(CLI::IsMember({"attention", "swa", "ttt-linear", "ttt-mlp"}));
        app.add_option("--backbone", mo.backbone, "block of a TTT model: transformer (TTT, SwiGLU) or mamba (causal conv, shared q/k with convs, gate)")
            ->check(CLI::IsMember({"transformer", "mamba"}));
        app.add_option("--window", mo.window, "keys each query sees with --mixer swa")->check(CLI::Range(Index(1), Index(1) << 24));
        app.add_option("--d-model", mo.d_model, "width")->check(CLI::Range(Index(8), Index(8192)));
        app.add_option("--layers", mo.layers, "blocks")->check(CLI::Range(Index(1), Index(256)));
        app.add_option("--heads", mo.heads, "attention heads")->check(CLI::Range(Index(1), Index(256)));
        app.add_option("--kv-heads", mo.kv_heads, "key/value heads (llama; 0: as many as --heads)")->check(CLI::Range(Index(0), Index(256)));
        app.add_option("--d-ff", mo.d_ff, "feed-forward width (0: 8/3 d for llama's SwiGLU, 4 d for gpt2)")->check(CLI::Range(Index(0), Index(65536)));
        context_option = app.add_option("--context", mo.context, "training context in tokens (lm); with a memory task, the positions the model has "
                                                "(at least the task's sequence; more lets a curriculum continue at longer lengths with --init)")
            ->check(CLI::Range(Index(2), Index(1) << 20));
        app.add_option("--init-std", mo.init_std, "standard deviation of the initial weights")->check(cli::range(1e-6, 1.0));
        app.add_option("--steps", steps, "optimizer steps")->check(CLI::Range(Index(1), Index(1) << 40));
        app.add_option("--batch", batch, "sequences per optimizer step (all ranks together under mpirun)")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--micro-batch", micro_batch, "sequences per forward/backward, gradients accumulated (0: the whole batch; under mpirun, batch / ranks)")
            ->check(CLI::Range(Index(0), Index(1) << 20));
        app.add_option("--lr", lr, "peak learning rate")->check(cli::range(1e-8, 10.0));
        app.add_option("--min-lr", min_lr, "final learning rate")->check(cli::range(0.0, 10.0));
        app.add_option("--warmup", warmup, "linear warm-up steps")->check(CLI::Range(Index(0), Index(1) << 40));
        app.add_option("--decay", decay, "learning-rate decay after the warm-up")->check(CLI::IsMember({"cosine", "linear", "constant"}));
        app.add_option("--weight-decay", weight_decay, "AdamW decoupled weight decay (matrices only)")->check(cli::range(0.0, 10.0));
        app.add_option("--beta2", beta2, "AdamW beta2 (beta1 is 0.9)")->check(cli::range(0.0, 0.999999));
        app.add_option("--clip", clip, "clip the global gradient norm to this (0: off)")->check(cli::range(0.0, 1e6));
        app.add_option("--clip-value", clip_value, "clip every gradient entry to [-v, v] (0: off)")->check(cli::range(0.0, 1e6));
        app.add_option("--log-every", log_every, "progress line every N steps")->check(CLI::Range(Index(1), Index(1) << 40));
        app.add_option("--eval-every", eval_every, "held-out loss every N steps (0: only at the end)")->check(CLI::Range(Index(0), Index(1) << 40));
        app.add_option("--eval-batches", eval_batches, "held-out batches per evaluation")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--checkpoint-every", checkpoint_every, "checkpoint every N steps (and at the end)")->check(CLI::Range(Index(0), Index(1) << 40));
        app.add_flag("--checkpointing", checkpointing, "gradient checkpointing: recompute every block in backward (less memory, ~30% more time)");
        app.add_flag("--resume", resume, "continue from OUT/checkpoint if it exists");
        app.add_option("--init", init, "start from the weights of this model directory (same model options; e.g. a shorter-task run's "
                                       "OUT/checkpoint, for a curriculum over lengths); the optimizer starts fresh")
            ->check(CLI::ExistingDirectory);
      },
      [&] {
        if (min_lr > lr) cli::usage_error("--min-lr", "must not exceed --lr");
        if (micro_batch > batch) cli::usage_error("--micro-batch", "must not exceed --batch");
        if (warmup > steps) cli::usage_error("--warmup", "must not exceed --steps");
        // Data.
        std::unique_ptr<train::TextCorpus> text;
        std::unique_ptr<tasks::Corpus> noise;
        std::unique_ptr<train::BatchSource> source;
        if (task == "lm") {
          text = std::make_unique<train::TextCorpus>(corpus == "kjv" ? train::TextCorpus::kjv(held_out) : train::TextCorpus::from_file(corpus, held_out));
          source = std::make_unique<train::WindowSource>(*text, mo.context, cli::seed());
        } else {
          noise = std::make_unique<tasks::Corpus>(background.empty() ? tasks::Corpus::fortunes() : tasks::Corpus::from_path(background));
          tasks::TaskOptions t;
          t.task = task == "fact_memorization" ? tasks::Task::fact_memorization : task == "fact_detection" ? tasks::Task::fact_detection : tasks::Task::reasoning;
          t.length = task_length;
          source = std::make_unique<train::TaskSource>(*noise, t, cli::seed());
          mo.context = context_option->count() > 0 ? std::max(mo.context, source->seq_len()) : source->seq_len();
        }
        // Model.
        Decoder<float> model = is_ttt(mo) ? ttt::make_decoder<float>(ttt_spec(mo)) : Decoder<float>::create(model_config(mo));
        if (is_ttt(mo)) ttt::init_for_training(model, cli::seed(), mo.init_std);
        else init_for_training(model, cli::seed(), mo.init_std);
        const ModelConfig& config = model.config;
        train::ModelIO<float> model_io;  // Hugging Face layout; ttt-lm-pytorch's for TTT models
        if (is_ttt(mo)) {
          model_io.save = [](const Decoder<float>& m, const std::filesystem::path& d) { ttt::save_decoder<float>(m, d); };
          model_io.load = [](const std::filesystem::path& d) { return ttt::load_decoder<float>(d); };
        }
        if (!init.empty()) {
          Decoder<float> start = model_io.load(init);
          train::copy_parameters(start, model, init);
        }
        train::TrainerOptions o;
        o.steps = steps, o.batch = batch, o.micro_batch = micro_batch;
        o.schedule = {.peak = lr, .min_lr = min_lr, .warmup = warmup, .total = steps, .decay = train::parse_decay(decay)};
        o.adamw.weight_decay = weight_decay, o.adamw.clip_norm = clip, o.adamw.clip_value = clip_value, o.adamw.beta2 = beta2;
        o.log_every = log_every, o.eval_every = eval_every, o.eval_batches = eval_batches, o.checkpoint_every = checkpoint_every;
        o.out_dir = out, o.resume = resume, o.seed = cli::seed();
        o.collective = ranks.collective();
        if (checkpointing) o.step.checkpoint = [](Index) { return true; };
        if (ranks.root()) std::printf("engram-train: %s model, %lld parameters (d %lld, %lld layers, %lld heads), %s; %lld steps of %lld x %lld tokens, %d threads\n",
                    config.architecture.c_str(), (long long)model.n_params(), (long long)config.d_model, (long long)config.n_layers,
                    (long long)config.n_heads, source->describe().c_str(), (long long)steps, (long long)batch, (long long)source->seq_len(),
                    cli::threads());
        if (ranks.root() && o.collective) {
          const Index micro = micro_batch > 0 ? micro_batch : (batch + ranks.size() - 1) / ranks.size();
          std::printf("data-parallel over %s: micro-batches of %lld sequences, micro-batch j on rank j %% %d, gradients summed\n",
                      ranks.describe().c_str(), (long long)micro, ranks.size());
        }
        if (ranks.root())
          std::printf("mixer %s%s; training FLOPs per token (analytic, forward + backward): %.4g\n", mo.mixer.c_str(),
                      is_ttt(mo) ? (" on the " + mo.backbone + " backbone").c_str() : "", training_flops_per_token(model, *source));
        train::Trainer<float> trainer(model, *source, o, model_io);
        trainer.run([&](const train::Progress& p) {
          if (!ranks.root()) return;
          std::printf("step %6lld/%lld  loss %.4f (%.3f bits)", (long long)p.step, (long long)p.steps, p.loss, train::Progress::bits(p.loss));
          if (std::isfinite(p.held_out)) std::printf("  held-out %.4f (%.3f bits)", p.held_out, train::Progress::bits(p.held_out));
          std::printf("  lr %.2e  |g| %.3f  %.0f tok/s  elapsed %s  ETA %s\n", p.lr, p.grad_norm, p.tokens_per_s, duration(p.elapsed_s).c_str(),
                      duration(p.eta_s).c_str());
          std::fflush(stdout);
        });
        if (ranks.root()) std::printf("wrote %s/checkpoint (a Hugging Face model directory), %s/train.csv, %s/train.svg\n", out.c_str(), out.c_str(), out.c_str());
        return 0;
      }));
}
