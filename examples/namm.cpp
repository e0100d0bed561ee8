// engram-namm: reads a long input through a decoder with a KV-cache policy (NAMM or a baseline) and
// reports, every n_up tokens, the cache per layer and what it saves against full attention; then,
// with --question, answers it from what the cache kept (greedy, streamed as text).
#include <chrono>

#include "example_util.hpp"
#include "text_io.hpp"

using namespace engram;

namespace {
// Analytic attention FLOPs of a full cache over `tokens` tokens (both products, causal).
double full_attention_flops(const ModelConfig& c, Index tokens) {
  return 2.0 * double(c.n_layers * c.n_heads) * flops::attention_product(flops::causal_pairs(tokens, tokens), c.head_dim);
}
using examples::full_cache_bytes;
}  // namespace

int main(int argc, char** argv) {
  std::string policy_name = "namm", budget_text, namm_weights, file, corpus, model_dir, question;
  Index n_up = 512, length = 8192, answer_tokens = 16;
  return cli::run(
      argc, argv,
      "engram-namm: reads a long input through a decoder with a KV-cache policy (NAMM or a baseline) and reports, every "
      "n_up tokens, the cache per layer and what it saves against full attention.",
      [&](CLI::App& app) {
        app.add_option("--policy", policy_name, "cache policy")
            ->check(CLI::IsMember({"namm", "h2o", "knorm", "streaming", "snapkv", "tova", "recency", "expected_attention", "keydiff", "none"}));
        app.add_option("--budget", budget_text,
                       "tokens per KV head (2048) or a ratio of the tokens seen (0.25); required by the baselines, an optional cap for NAMM")
            ->check(examples::budget_validator());
        app.add_option("--namm-weights", namm_weights, "NAMM weights (convert_namm_checkpoint.py, engram-namm-evolve); default: random")
            ->check(cli::regular_file());
        app.add_option("--n-up", n_up, "NAMM update interval and report interval, a multiple of 16")
            ->check(CLI::Range(Index(16), Index(1) << 20))
            ->check(cli::checked_by("INT", [](const std::string& t) {
              namm::NammConfig c;
              c.n_up = std::stol(t);
              c.validate();
            }));
        app.add_option("--file", file, "input text file (one token per byte); default: a generated bAbI-style document")
            ->check(cli::regular_file());
        app.add_option("--length", length, "tokens of the generated document")->check(CLI::Range(Index(1), Index(1) << 26));
        app.add_option("--corpus", corpus, "background text of the generated document: a file or a directory (default: Debian's fortunes)")
            ->check(cli::regular_file(/*allow_directory=*/true));
        app.add_option("--model", model_dir, "Hugging Face model directory (default: a random byte-level model)")
            ->check(CLI::ExistingDirectory);
        app.add_option("--question", question, "text appended after the input, then answered greedily from the evicted cache (streamed)");
        app.add_option("--answer-tokens", answer_tokens, "tokens of the answer to --question at most (it also stops at EOS)")
            ->check(CLI::Range(Index(1), Index(1) << 20));
        app.get_option("--seed")->description("seed of the random NAMM weights (without --namm-weights)");
      },
      [&] {
        const auto model = examples::load_or_default(model_dir);
        // Text through the model directory's tokenizer when it has one; bytes for byte-level models.
        std::string why;
        const std::optional<examples::TextCodec> codec = model_dir.empty() ? examples::TextCodec::bytes(model.config.vocab_size)
                                                                           : examples::TextCodec::for_model(model_dir, model.config.vocab_size, why);
        if (!question.empty() && !codec) cli::usage_error("--question", why);
        std::vector<std::int32_t> tokens;
        std::string what;
        if (!file.empty()) {
          const std::string text = read_text_file(file);
          if (text.empty()) cli::usage_error("--file", file + " is empty");
          tokens = codec ? codec->encode(text) : tasks::ByteTokenizer::encode(text);
          what = file;
        } else {
          const auto doc = examples::babi_document(length, 7, corpus, "--length");
          const bool words = codec && !codec->is_bytes();  // the document's text through the model's tokenizer
          tokens = words ? codec->encode(tasks::ByteTokenizer::decode(doc.tokens)) : doc.tokens;
          what = "generated bAbI-style document (fact \"" + doc.info.facts[0] + (words ? "\" at byte " : "\" at token ") +
                 std::to_string(doc.info.fact_spans[0].begin) + ", question \"" + doc.info.question + "\")";
        }
        for (std::size_t i = 0; i < tokens.size(); ++i)
          if (tokens[i] >= model.config.vocab_size)
            cli::usage_error(file.empty() ? "--model" : "--file", "byte " + std::to_string(tokens[i]) + " at offset " + std::to_string(i) +
                                                                     " is outside the model's vocabulary of " + std::to_string(model.config.vocab_size));
        namm::NammWeights<float> weights;
        if (!namm_weights.empty()) {
          weights = namm::load_namm<float>(namm_weights);
        } else {
          weights.theta = Tensor<float>({namm::BamScorer<float>::kParams});
          std::mt19937_64 rng(cli::seed());
          std::normal_distribution<float> normal(0.f, 0.05f);
          for (Index i = 0; i < weights.theta.numel(); ++i) weights.theta[i] = normal(rng);
          weights.stats.var.fill(1.0);
        }
        weights.config.n_up = n_up;
        const Budget budget = parse_budget(budget_text);
        if (policy_name != "namm" && policy_name != "none" && !budget.limited())
          cli::usage_error("--budget", "policy " + policy_name + " needs a budget (tokens, e.g. 2048, or a ratio, e.g. 0.25)");
        const auto policy = eval::make_policy<float>(policy_name, budget, &weights);
        const ModelConfig& c = model.config;
        std::printf("input: %zu tokens, %s\npolicy: %s, model: d=%td, %td layers, %td heads / %td KV heads\n\n", tokens.size(),
                    what.c_str(), policy ? policy->name().c_str() : "none (full cache)", c.d_model, c.n_layers, c.n_heads, c.n_kv_heads);
        std::printf("%8s  %-28s %10s %10s %10s %10s %9s\n", "tokens", "cache per layer (max/head)", "KV MiB", "full MiB", "GFLOP", "full GF", "ms/token");

        auto state = model.make_state(policy.get());
        const Index report_every = n_up;
        const auto start = std::chrono::steady_clock::now();
        auto last = start;
        for (Index i = 0; i < Index(tokens.size()); i += report_every) {
          const Index n = std::min<Index>(report_every, Index(tokens.size()) - i);
          model.prefill(std::span(tokens).subspan(std::size_t(i), std::size_t(n)), state, {.chunk = report_every});
          const auto now = std::chrono::steady_clock::now();
          std::string sizes;
          for (auto* cache : state.caches()) sizes += std::to_string(cache->max_size()) + " ";
          const Index seen = state.position();
          const double attention = state.flops.attention() + state.flops[FlopCategory::namm_features] + state.flops[FlopCategory::namm_scorer];
          std::printf("%8td  %-28s %10.2f %10.2f %10.2f %10.2f %9.3f\n", seen, sizes.c_str(), double(state.bytes()) / (1 << 20),
                      full_cache_bytes(c, seen) / (1 << 20), attention * 1e-9, full_attention_flops(c, seen) * 1e-9,
                      std::chrono::duration<double, std::milli>(now - last).count() / double(n));
          last = now;
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const Index seen = state.position();
        const double mine = state.flops.attention() + state.flops[FlopCategory::namm_features] + state.flops[FlopCategory::namm_scorer];
        std::printf("\nsummary (%s)\n", policy ? policy->name().c_str() : "none");
        std::printf("  tokens read            %td in %.2f s (%.0f tokens/s)\n", seen, seconds, double(seen) / seconds);
        std::printf("  KV state               %.2f MiB vs %.2f MiB full cache (%.1f%% kept)\n", double(state.bytes()) / (1 << 20),
                    full_cache_bytes(c, seen) / (1 << 20), 100.0 * double(state.bytes()) / full_cache_bytes(c, seen));
        std::printf("  attention + policy     %.2f GFLOP vs %.2f GFLOP full attention (%.1f%%)\n", mine * 1e-9,
                    full_attention_flops(c, seen) * 1e-9, 100.0 * mine / full_attention_flops(c, seen));
        std::printf("  of which NAMM          features %.3f GFLOP, scorer %.3f GFLOP\n", state.flops[FlopCategory::namm_features] * 1e-9,
                    state.flops[FlopCategory::namm_scorer] * 1e-9);
        std::printf("  whole model            %.2f GFLOP\n", state.flops.total() * 1e-9);
        if (!question.empty()) {
          const std::vector<std::int32_t> q = codec->encode(question, /*add_special=*/false);
          if (q.empty()) cli::usage_error("--question", "the question has no tokens");
          Tensor<float> logits = model.prefill(q, state);
          state.end_prompt();
          std::printf("\nquestion %s\nanswer  ", question.c_str());
          Sampler greedy;
          const examples::Continuation a = examples::continue_text(model, state, std::move(logits), answer_tokens, greedy, *codec, [](std::string_view t) {
            std::fwrite(t.data(), 1, t.size(), stdout);
            std::fflush(stdout);
          }, q);
          std::printf("\n  (%zu tokens, %s; %s)\n", a.ids.size(), a.stopped_at_eos ? "stopped at EOS" : "--answer-tokens reached",
                      examples::cache_summary(c, state).c_str());
        }
        return 0;
      });
}
