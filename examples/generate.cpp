// engram-generate: loads a Hugging Face model directory (config.json + safetensors) and continues a
// prompt, greedy or sampled: text in (the directory's tokenizer, or bytes for a byte-level model),
// text streamed out as it is generated, until EOS or -n tokens; or token ids in and out. With a
// KV-cache policy it reads the prompt with an evicting cache and reports what the cache kept.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engram/eval/policy_factory.hpp"
#include "example_util.hpp"
#include "text_io.hpp"

using namespace engram;

int main(int argc, char** argv) {
  std::string model_dir, tokens_arg, prompt, prompt_file, policy_name = "none", budget_text, namm_weights, weights = "f32", kv = "f32";
  Index n_new = 16;
  SamplerOptions sampling;
  CLI::Option *tokens_opt = nullptr, *prompt_opt = nullptr, *file_opt = nullptr;
  return cli::run(
      argc, argv,
      "engram-generate: continues a prompt with a Hugging Face model (config.json + safetensors), greedy or sampled: text in and "
      "streamed text out through the model directory's tokenizer (or bytes for a byte-level model), or token ids in and out.",
      [&](CLI::App& app) {
        app.add_option("--model", model_dir, "Hugging Face model directory (config.json + safetensors, and tokenizer.json, tokenizer.model or vocab.txt for text)")
            ->required()
            ->check(CLI::ExistingDirectory);
        tokens_opt = app.add_option("--tokens", tokens_arg, "prompt as token ids separated by spaces, each in [0, vocab); prints the generated ids");
        prompt_opt = app.add_option("--prompt", prompt, "prompt as text (the model's tokenizer, or one token per byte for a byte-level model); streams the generated text");
        file_opt = app.add_option("--prompt-file", prompt_file, "prompt as the text of a file, like --prompt")->check(cli::regular_file());
        app.add_option("-n", n_new, "tokens to generate at most (text generation also stops at the tokenizer's EOS)")->check(CLI::Range(Index(0), Index(1) << 24));
        app.add_option("--temperature", sampling.temperature, "sampling temperature; 0 = greedy")->check(cli::range(0.0, 1e6));
        app.add_option("--top-k", sampling.top_k, "sample among the k most likely tokens; 0 = the whole vocabulary")
            ->check(CLI::Range(Index(0), Index(1) << 31));
        app.add_option("--policy", policy_name, "KV-cache policy reading the prompt and the answer (none: full cache)")
            ->check(CLI::IsMember(std::vector<std::string>(std::begin(eval::kPolicyNames), std::end(eval::kPolicyNames))));
        app.add_option("--budget", budget_text, "cache budget of the policy: tokens per KV head (2048) or a ratio of the tokens seen (0.25)")
            ->check(examples::budget_validator());
        app.add_option("--namm-weights", namm_weights, "NAMM weights for --policy namm (convert_namm_checkpoint.py, engram-namm-evolve)")
            ->check(cli::regular_file());
        examples::add_weights_option(app, weights);
        examples::add_kv_option(app, kv);
      },
      [&] {
        const std::size_t sources = tokens_opt->count() + prompt_opt->count() + file_opt->count();
        if (sources == 0) cli::usage_error("--tokens", "give a prompt with --tokens, --prompt or --prompt-file");
        if (sources > 1) cli::usage_error("--prompt", "give one prompt: --tokens, --prompt or --prompt-file");
        const bool text_mode = tokens_opt->count() == 0;
        const char* prompt_flag = file_opt->count() ? "--prompt-file" : prompt_opt->count() ? "--prompt" : "--tokens";
        if (policy_name == "namm" && namm_weights.empty()) cli::usage_error("--namm-weights", "--policy namm needs its weights");
        const Budget budget = parse_budget(budget_text);
        if (policy_name != "none" && policy_name != "namm" && !budget.limited())
          cli::usage_error("--budget", "policy " + policy_name + " needs a budget (tokens, e.g. 2048, or a ratio, e.g. 0.25)");
        sampling.seed = cli::seed();

        auto model = hf::load_decoder<float>(model_dir, examples::load_options(weights));
        const std::string weights_line = examples::apply_weights(model, weights) + "; " + examples::apply_kv(model, kv);
        const Index vocab = model.config.vocab_size;
        std::string why;
        const std::optional<examples::TextCodec> codec = examples::TextCodec::for_model(model_dir, vocab, why);
        std::vector<std::int32_t> tokens;
        if (text_mode) {
          const std::string text = file_opt->count() ? read_text_file(prompt_file) : prompt;
          if (text.empty()) cli::usage_error(prompt_flag, "the prompt is empty");
          if (!codec) cli::usage_error(prompt_flag, why + "; or give token ids with --tokens");
          tokens = codec->encode(text);
          for (std::int32_t id : tokens)
            if (id < 0 || id >= vocab) cli::usage_error(prompt_flag, "the tokenizer gave id " + std::to_string(id) + ", outside the model's vocabulary [0, " + std::to_string(vocab) + ")");
        } else {
          tokens = examples::parse_token_ids(tokens_arg, vocab);
        }
        if (tokens.empty()) cli::usage_error(prompt_flag, "the prompt has no tokens");

        std::unique_ptr<namm::NammWeights<float>> weights;
        if (!namm_weights.empty()) weights = std::make_unique<namm::NammWeights<float>>(namm::load_namm<float>(namm_weights));
        const std::unique_ptr<CachePolicy<float>> policy = policy_name == "none" ? nullptr : eval::make_policy<float>(policy_name, budget, weights.get());
        Sampler sampler(sampling);
        auto state = model.make_state(policy.get());
        const auto t0 = std::chrono::steady_clock::now();
        auto logits = model.prefill(tokens, state);
        state.end_prompt();  // policies that compress once (SnapKV, ExpectedAttention) do it here
        const auto t1 = std::chrono::steady_clock::now();
        const std::string after_prompt = policy ? examples::cache_summary(model.config, state) : std::string();

        Index generated = 0;
        std::string ending;
        if (text_mode) {
          const examples::Continuation c = examples::continue_text(model, state, std::move(logits), n_new, sampler, *codec, [](std::string_view text) {
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);  // the user sees each token as it is chosen
          }, tokens);
          std::printf("\n");
          generated = Index(c.ids.size());
          ending = c.stopped_at_eos ? "stopped at EOS" : "stopped after -n " + std::to_string(n_new) + " tokens";
        } else {
          std::vector<std::int32_t> ids;
          for (Index i = 0; i < n_new; ++i) {
            ids.push_back(sampler.sample<float>(logits.view()));
            if (i + 1 < n_new) logits = model.decode(ids.back(), state);
          }
          std::printf("prompt %zu tokens, generated:", tokens.size());
          for (auto id : ids) std::printf(" %d", id);
          std::printf("\n");
          generated = Index(ids.size());
          ending = "stopped after -n " + std::to_string(n_new) + " tokens";
        }
        const auto t2 = std::chrono::steady_clock::now();
        std::fflush(stdout);
        // The report goes to stderr, so stdout holds the generated text (or ids) alone.
        std::fprintf(stderr, "prompt: %zu tokens (%s); generated %td tokens, %s\n", tokens.size(),
                     text_mode ? codec->name().c_str() : "token ids", generated, ending.c_str());
        std::fprintf(stderr, "prefill %.1f ms, decode %.2f ms/token, KV cache %.1f KiB\n",
                     std::chrono::duration<double, std::milli>(t1 - t0).count(),
                     std::chrono::duration<double, std::milli>(t2 - t1).count() / double(std::max<Index>(generated, 1)),
                     double(state.bytes()) / 1024.0);
        std::fprintf(stderr, "%s\n", weights_line.c_str());
        if (policy) {
          std::fprintf(stderr, "cache policy %s, after the prompt: %s\n", policy->name().c_str(), after_prompt.c_str());
          std::fprintf(stderr, "cache policy %s, at the end:      %s\n", policy->name().c_str(), examples::cache_summary(model.config, state).c_str());
        }
        return 0;
      });
}
