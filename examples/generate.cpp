// engram-generate: loads a Hugging Face model directory (config.json + safetensors) and continues a
// prompt given as token ids, greedy or sampled.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <engram/engram.hpp>

using namespace engram;

namespace {
void usage(const char* argv0) {
  std::printf(
      "usage: %s --model DIR (--tokens \"1 2 3\" | --prompt TEXT) [-n N] [--temperature T] [--top-k K] [--seed S] [-t THREADS]\n"
      "  --tokens       prompt as token ids separated by spaces\n"
      "  --prompt       prompt as text, one token per byte (byte-level vocabularies only)\n"
      "  -n             tokens to generate (default 16)\n"
      "  --temperature  0 = greedy (default 0)\n",
      argv0);
}
}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, tokens_arg, prompt;
  Index n_new = 16;
  SamplerOptions sampling;
  int threads = 0;
  bool have_prompt = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") model_dir = next();
    else if (a == "--tokens") tokens_arg = next(), have_prompt = true;
    else if (a == "--prompt") prompt = next(), have_prompt = true;
    else if (a == "-n") n_new = std::stol(next());
    else if (a == "--temperature") sampling.temperature = std::stod(next());
    else if (a == "--top-k") sampling.top_k = std::stol(next());
    else if (a == "--seed") sampling.seed = std::stoull(next());
    else if (a == "-t") threads = std::stoi(next());
    else if (a == "--help" || a == "-h") return usage(argv[0]), 0;
    else return usage(argv[0]), 2;
  }
  if (model_dir.empty() || !have_prompt) return usage(argv[0]), 2;
  try {
    if (threads > 0) set_num_threads(threads);
    const auto model = hf::load_decoder<float>(model_dir);
    std::vector<std::int32_t> tokens;
    if (!tokens_arg.empty()) {
      std::istringstream in(tokens_arg);
      for (long id; in >> id;) tokens.push_back(std::int32_t(id));
      check(in.eof(), "--tokens", "expected integers separated by spaces");
    }
    for (unsigned char c : prompt) tokens.push_back(c);
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
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
