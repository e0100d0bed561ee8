// engram-eval: scores a model on what it remembers. (1) The memory tasks (fact memorization,
// detection, reasoning) at a list of lengths: answer accuracy over seeded held-out samples by the
// likelihood of the 6 candidate answers, with a 95% Wilson interval. (2) Held-out bits per token by
// position in the context. Any model through one interface: a Hugging Face decoder, the same with a
// KV-cache policy, a TTT model, an RMT or ARMT. Prints tables; writes CSV + SVG.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "example_util.hpp"
#include "text_io.hpp"
#include "engram/eval/memory_tasks.hpp"
#include "engram/eval/perplexity.hpp"
#include "engram/io/hf.hpp"
#include "engram/io/svg.hpp"
#include "engram/namm/checkpoint.hpp"
#include "engram/eval/policy_factory.hpp"
#include "engram/train/data.hpp"
#include "engram/ttt/loader.hpp"

using namespace engram;

namespace {

std::vector<Index> parse_lengths(const std::string& text) {
  std::vector<Index> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 64 || v > (1ll << 31)) cli::usage_error("--lengths", "\"" + item + "\" is not a length in [64, 2^31]");
    out.push_back(Index(v));
  }
  if (out.empty()) cli::usage_error("--lengths", "no length given");
  return out;
}

// The model of a directory: TTT (model_type "ttt") or any Hugging Face decoder engram reads.
Decoder<float> load_any_decoder(const std::filesystem::path& dir, const hf::LoadOptions& options) {
  const json::Value cfg = read_json_file(dir / "config.json");
  const json::Value* type = cfg.find("model_type");
  if (cfg.contains("rmt")) cli::usage_error("--model", dir.string() + " is an RMT checkpoint: engram-eval reads RMT models through rmt::load (use --model with an RMT directory once supported)");
  if (type && type->is_string() && type->as_string() == "ttt") return ttt::load_decoder<float>(dir);  // compressed after loading
  return hf::load_decoder<float>(dir, options);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, policy = "none", budget = "", namm_weights, weight_format = "f32", kv_format = "f32", task = "all", questions = "both", lengths_text = "1024", background, corpus = "kjv", out;
  Index samples = 100, segment_size = 0, context = 2048, windows = 16, bucket = 256;
  double held_out = 0.02;
  Index decode_steps = 64, read_chunk = 512;
  bool bpb = false, no_tasks = false, cost = false;
  return cli::run(
      argc, argv,
      "engram-eval: scores a model on what it remembers: memory-task accuracy by length (likelihood of the 6 candidate answers, "
      "95% Wilson interval) and held-out bits per token by position; any decoder, with any KV-cache policy, or a TTT model.",
      [&](CLI::App& app) {
        app.add_option("--model", model_dir, "model directory (config.json + model.safetensors: llama/gpt2/ttt)")->required()->check(CLI::ExistingDirectory);
        app.add_option("--policy", policy, "KV-cache policy reading the inputs")->check(CLI::IsMember(std::vector<std::string>(std::begin(eval::kPolicyNames), std::end(eval::kPolicyNames))));
        app.add_option("--budget", budget, "cache budget of the policy: tokens (e.g. 512) or a ratio of the input (e.g. 0.25)");
        app.add_option("--namm-weights", namm_weights, "NAMM weights (policy namm)")->check(cli::regular_file());
        app.add_option("--read-chunk", read_chunk, "tokens per model step while reading: a policy that evicts after every step (H2O, "
                                                   "TOVA, KNorm, StreamingLLM, KeyDiff, Recency) decides once per step; 1 reads token by "
                                                   "token, as those papers do (NAMM steps at its n_up whatever this is)")
            ->check(CLI::Range(Index(1), Index(1) << 24));
        app.add_option("--task", task, "memory task to score")->check(CLI::IsMember({"all", "fact_memorization", "fact_detection", "reasoning"}));
        app.add_option("--questions", questions, "reasoning: qa4 question forms, both (bAbI's mix), direct or inverse")
            ->check(CLI::IsMember({"both", "direct", "inverse"}));
        app.add_option("--lengths", lengths_text, "comma-separated sample lengths in tokens, e.g. 1024,4096,16384");
        app.add_option("--samples", samples, "held-out samples per task and length")->check(CLI::Range(Index(1), Index(1) << 24));
        app.add_option("--segment-size", segment_size, "facts at segment starts of this size (0: anywhere; RMT: its segment size)")->check(CLI::Range(Index(0), Index(1) << 30));
        app.add_option("--background", background, "background text of the tasks (default: Debian's fortunes)")->check(cli::regular_file());
        app.add_flag("--no-tasks", no_tasks, "skip the memory tasks");
        app.add_flag("--bpb", bpb, "also measure held-out bits per token by position");
        app.add_option("--corpus", corpus, "held-out text for --bpb: a file, or 'kjv' (the held-out tail of Debian's bible-kjv, as engram-train splits it)");
        app.add_option("--held-out", held_out, "held-out fraction at the end of the corpus (as in training)")->check(cli::range(0.001, 1.0));
        app.add_option("--context", context, "tokens per --bpb window")->check(CLI::Range(Index(2), Index(1) << 24));
        app.add_option("--windows", windows, "windows for --bpb")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--bucket", bucket, "positions per --bpb bucket")->check(CLI::Range(Index(1), Index(1) << 24));
        app.add_flag("--cost", cost, "inference cost at --context: prefill time and FLOPs of one window of held-out text, then the decode "
                     "time per token of --decode-steps more tokens, and the state's bytes");
        app.add_option("--decode-steps", decode_steps, "tokens decoded one at a time after the prefill for --cost")->check(CLI::Range(Index(1), Index(1) << 20));
        app.add_option("--out", out, "prefix of the CSV and SVG files written (PREFIX_tasks.csv/.svg, PREFIX_bpb.csv/.svg, PREFIX_cost.csv)");
        examples::add_weights_option(app, weight_format);
        examples::add_kv_option(app, kv_format);
      },
      [&] {
        Decoder<float> loaded = load_any_decoder(model_dir, examples::load_options(weight_format));
        const std::string weights_line = examples::apply_weights(loaded, weight_format) + "; " + examples::apply_kv(loaded, kv_format);
        const Decoder<float>& model = loaded;
        std::unique_ptr<namm::NammWeights<float>> weights;
        if (!namm_weights.empty()) weights = std::make_unique<namm::NammWeights<float>>(namm::load_namm<float>(namm_weights));
        std::unique_ptr<CachePolicy<float>> cache_policy;
        if (policy != "none") cache_policy = eval::make_policy<float>(policy, parse_budget(budget), weights.get());
        eval::DecoderReader<float> reader(model, cache_policy.get(), "", read_chunk);
        // A model with its own tokenizer reads the tasks' text in its tokens (words); a byte-level one in bytes.
        std::string why;
        const std::optional<examples::TextCodec> codec = examples::TextCodec::for_model(model_dir, model.config.vocab_size, why);
        if (!codec) cli::usage_error("--model", why);
        eval::TextEncoder encode;
        if (!codec->is_bytes()) encode = [&codec](std::string_view text, bool special) { return codec->encode(text, special); };
        std::printf("engram-eval: %s (%lld parameters), %s, text as %s\n", model_dir.c_str(), (long long)model.n_params(), reader.describe().c_str(),
                    codec->is_bytes() ? "bytes" : (codec->name() + " tokens (task lengths are bytes of text)").c_str());
        std::printf("%s\n", weights_line.c_str());
        if (!no_tasks) {
          const std::vector<Index> lengths = parse_lengths(lengths_text);
          const tasks::Corpus noise = background.empty() ? tasks::Corpus::fortunes() : tasks::Corpus::from_path(background);
          std::vector<tasks::Task> which;
          if (task == "all" || task == "fact_memorization") which.push_back(tasks::Task::fact_memorization);
          if (task == "all" || task == "fact_detection") which.push_back(tasks::Task::fact_detection);
          if (task == "all" || task == "reasoning") which.push_back(tasks::Task::reasoning);
          std::printf("\n%-18s %10s %10s %8s %9s %17s %12s %8s %10s %9s\n", "task", "length", "tokens", "samples", "accuracy", "95% interval",
                      "log p(ans)", "kept", "state MiB", "seconds");
          std::ofstream csv;
          if (!out.empty()) {
            csv.open(out + "_tasks.csv");
            csv << "model,policy,budget,task,length,samples,correct,accuracy,ci_low,ci_high,answer_log_prob,cache_kept,state_bytes,seconds,tokens\n";
          }
          std::vector<svg::Series> series;
          for (tasks::Task t : which) {
            svg::Series s{std::string(tasks::name(t)), svg::palette(series.size()), false, {}};
            for (Index len : lengths) {
              tasks::TaskOptions o;
              o.task = t, o.length = len, o.segment_size = segment_size, o.questions = tasks::parse_questions(questions);
              const eval::TaskScore r = eval::score_task(reader, noise, o, {.samples = samples, .encode = encode});
              std::printf("%-18s %10lld %10.0f %8lld %8.1f%% [%5.1f%%, %5.1f%%] %12.3f %7.1f%% %10.2f %9.1f\n", std::string(tasks::name(t)).c_str(),
                          (long long)len, r.mean_tokens, (long long)samples, 100 * r.accuracy, 100 * r.ci.lo, 100 * r.ci.hi, r.answer_log_prob,
                          100 * r.mean_cache_kept, double(r.peak_state_bytes) / 1048576.0, r.seconds);
              std::fflush(stdout);
              if (csv.is_open())
                csv << model_dir << ',' << policy << ',' << (budget.empty() ? "none" : budget) << ',' << tasks::name(t) << ',' << len << ',' << samples << ','
                    << r.correct << ',' << r.accuracy << ',' << r.ci.lo << ',' << r.ci.hi << ',' << r.answer_log_prob << ',' << r.mean_cache_kept << ','
                    << r.peak_state_bytes << ',' << r.seconds << ',' << r.mean_tokens << '\n';
              s.points.push_back({double(len), 100 * r.accuracy});
            }
            series.push_back(s);
          }
          if (!out.empty()) {
            svg::Series chance{"chance (1 in 6)", "#7f7f7f", true, {}};
            for (Index len : lengths) chance.points.push_back({double(len), 100.0 / 6.0});
            series.push_back(chance);
            svg::chart(out + "_tasks.svg", "memory-task accuracy: " + reader.describe(), {"tokens", true}, {"accuracy (%)"}, series);
          }
        }
        if (bpb) {
          const train::TextCorpus text = corpus == "kjv" ? train::TextCorpus::kjv(held_out) : train::TextCorpus::from_file(corpus, held_out);
          const std::vector<std::int32_t> ids = codec->encode(text.held_out());
          const eval::PositionCurve c = eval::bits_by_position(reader, ids, {.context = context, .windows = windows, .bucket = bucket});
          std::printf("\nheld-out bits per token by position (%lld windows of %lld tokens of %s): mean %.4f\n", (long long)windows, (long long)context,
                      text.source().c_str(), c.mean_bits);
          std::printf("%-16s %12s\n", "positions", "bits/token");
          for (std::size_t b = 0; b < c.bits.size(); ++b)
            std::printf("%6lld-%-9lld %12.4f\n", (long long)(b * std::size_t(bucket)), (long long)std::min<Index>(Index(b + 1) * bucket, context), c.bits[b]);
          if (!out.empty()) {
            std::ofstream f(out + "_bpb.csv");
            f << "model,policy,position_begin,position_end,bits,count\n";
            svg::Series s{reader.describe(), svg::palette(0), false, {}};
            for (std::size_t b = 0; b < c.bits.size(); ++b) {
              f << model_dir << ',' << policy << ',' << b * std::size_t(bucket) << ',' << std::min<Index>(Index(b + 1) * bucket, context) << ','
                << c.bits[b] << ',' << c.count[b] << '\n';
              s.points.push_back({double((Index(b) * bucket + std::min<Index>(Index(b + 1) * bucket, context)) / 2), c.bits[b]});
            }
            svg::chart(out + "_bpb.svg", "held-out bits per token by position", {"position in the context"}, {"bits per token"}, {s});
          }
        }
        if (cost) {
          // One sequence read as a server would: a prefill of the whole context, then token-by-token
          // decode; wall time, the layers' analytic FLOPs and the state (KV cache or inner model).
          const train::TextCorpus text = corpus == "kjv" ? train::TextCorpus::kjv(held_out) : train::TextCorpus::from_file(corpus, held_out);
          const std::vector<std::int32_t> ids = codec->encode(text.held_out());
          if (Index(ids.size()) < context + decode_steps)
            cli::usage_error("--context", "held-out text of " + std::to_string(ids.size()) + " tokens is shorter than --context + --decode-steps");
          using clock = std::chrono::steady_clock;
          auto state = model.make_state(cache_policy.get());
          const auto t0 = clock::now();
          model.prefill(std::span<const std::int32_t>(ids.data(), std::size_t(context)), state);
          const double prefill_s = std::chrono::duration<double>(clock::now() - t0).count();
          const double prefill_flops = state.flops.total();
          const std::size_t prefill_bytes = state.bytes();
          const auto t1 = clock::now();
          for (Index i = 0; i < decode_steps; ++i) model.decode(ids[std::size_t(context + i)], state);
          const double decode_s = std::chrono::duration<double>(clock::now() - t1).count() / double(decode_steps);
          const double decode_flops = (state.flops.total() - prefill_flops) / double(decode_steps);
          std::printf("\ninference cost at context %lld (%d threads): prefill %.3f s (%.0f tokens/s, %.4g FLOPs/token), state %.1f KiB; "
                      "decode %.3f ms/token (%.4g FLOPs/token), state %.1f KiB after %lld more tokens\n",
                      (long long)context, cli::threads(), prefill_s, double(context) / prefill_s, prefill_flops / double(context),
                      double(prefill_bytes) / 1024.0, 1e3 * decode_s, decode_flops, double(state.bytes()) / 1024.0, (long long)decode_steps);
          if (!out.empty()) {
            std::ofstream f(out + "_cost.csv");
            f << "model,policy,context,threads,prefill_s,prefill_flops_per_token,prefill_state_bytes,decode_s_per_token,decode_flops_per_token,"
                 "decode_state_bytes\n";
            f << model_dir << ',' << policy << ',' << context << ',' << cli::threads() << ',' << prefill_s << ',' << prefill_flops / double(context) << ','
              << prefill_bytes << ',' << decode_s << ',' << decode_flops << ',' << state.bytes() << '\n';
          }
        }
        return 0;
      });
}
