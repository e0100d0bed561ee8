// engram-generate: loads a Hugging Face model directory (config.json + safetensors) and continues a
// prompt given as token ids, greedy or sampled.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "example_util.hpp"

using namespace engram;

int main(int argc, char** argv) {
  std::string model_dir, tokens_arg, prompt;
  Index n_new = 16;
  SamplerOptions sampling;
  return cli::run(
      argc, argv, "engram-generate: continues a prompt with a Hugging Face model (config.json + safetensors), greedy or sampled.",
      [&](CLI::App& app) {
        app.add_option("--model", model_dir, "Hugging Face model directory (config.json + safetensors)")
            ->required()
            ->check(CLI::ExistingDirectory);
        app.add_option("--tokens", tokens_arg, "prompt as token ids separated by spaces, each in [0, vocab)");
        app.add_option("--prompt", prompt, "prompt as text, one token per byte (byte-level vocabularies only)");
        app.add_option("-n", n_new, "tokens to generate")->check(CLI::Range(Index(0), Index(1) << 24));
        app.add_option("--temperature", sampling.temperature, "sampling temperature; 0 = greedy")->check(cli::range(0.0, 1e6));
        app.add_option("--top-k", sampling.top_k, "sample among the k most likely tokens; 0 = the whole vocabulary")
            ->check(CLI::Range(Index(0), Index(1) << 31));
      },
      [&] {
        if (tokens_arg.empty() && prompt.empty()) cli::usage_error("--tokens", "give a prompt with --tokens or --prompt");
        sampling.seed = cli::seed();
        const auto model = hf::load_decoder<float>(model_dir);
        const Index vocab = model.config.vocab_size;
        std::vector<std::int32_t> tokens = examples::parse_token_ids(tokens_arg, vocab);
        for (unsigned char c : prompt) {
          if (Index(c) >= vocab) cli::usage_error("--prompt", "byte " + std::to_string(int(c)) + " is outside the model's vocabulary of " + std::to_string(vocab));
          tokens.push_back(c);
        }
        if (tokens.empty()) cli::usage_error("--tokens", "the prompt has no tokens");
        Sampler sampler(sampling);
        auto state = model.make_state();
        const auto t0 = std::chrono::steady_clock::now();
        auto logits = model.prefill(tokens, state);
        const auto t1 = std::chrono::steady_clock::now();
        std::vector<std::int32_t> generated;
        for (Index i = 0; i < n_new; ++i) {
          generated.push_back(sampler.sample<float>(logits.view()));
          if (i + 1 < n_new) logits = model.decode(generated.back(), state);
        }
        const auto t2 = std::chrono::steady_clock::now();
        std::printf("prompt %zu tokens, generated:", tokens.size());
        for (auto id : generated) std::printf(" %d", id);
        std::printf("\nprefill %.1f ms, decode %.2f ms/token, KV cache %.1f KiB\n",
                    std::chrono::duration<double, std::milli>(t1 - t0).count(),
                    std::chrono::duration<double, std::milli>(t2 - t1).count() / double(std::max<Index>(n_new - 1, 1)),
                    double(state.bytes()) / 1024.0);
        return 0;
      });
}
