// Shared by the example programs: the default byte-level model, input documents, token lists.
// Argument parsing is cli.hpp.
#pragma once

#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <engram/engram.hpp>

#include "cli.hpp"

namespace examples {

using namespace engram;

/// A byte-level Llama-style model with random weights (d 256, 4 layers, 8 heads over 2 KV heads):
/// what the examples run when no --model is given. Its vocabulary covers the tasks' byte tokenizer.
inline Decoder<float> default_model(std::uint64_t seed = 1) {
  auto c = ModelConfig::llama(tasks::ByteTokenizer::vocab_size, 256, 4, 8, 2, 768);
  c.tie_embeddings = true;
  c.max_positions = 1 << 22;
  auto m = Decoder<float>::create(c);
  init_random(m, seed);
  return m;
}

/// The model of --model DIR, or the default one.
inline Decoder<float> load_or_default(const std::string& dir) { return dir.empty() ? default_model() : hf::load_decoder<float>(dir); }

/// --weights: how the model's Linears are stored for inference (Decoder::compress_weights).
inline CLI::Option* add_weights_option(CLI::App& app, std::string& weights) {
  return app
      .add_option("--weights", weights,
                  "storage of the projections and LM head: f32 (as loaded), bf16, f16, q8 (blocks of 32 int8 + f16 scale) or q4 "
                  "(blocks of 32 4-bit + f16 scale); products accumulate in fp32")
      ->check(CLI::IsMember({"f32", "bf16", "f16", "q8", "q4"}));
}

/// --kv: how the KV cache stores keys and values (Decoder::set_kv_format).
inline CLI::Option* add_kv_option(CLI::App& app, std::string& kv) {
  return app
      .add_option("--kv", kv,
                  "storage of the KV cache: f32 (default), f16 or bf16 (half the bytes per cached token, rounded to nearest even; "
                  "attention widens them back to fp32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
}

/// Applies --kv to a model; returns a line for the report ("KV cache f16: 2 bytes a value").
inline std::string apply_kv(Decoder<float>& model, const std::string& kv) {
  model.set_kv_format(parse_weight_format(kv.empty() ? "f32" : kv));
  return "KV cache " + std::string(format_name(model.kv_format())) + ": " + (model.kv_format() == WeightFormat::f32 ? "4" : "2") + " bytes a value";
}

/// --weights as load options: a bf16/f16 checkpoint's projections then stay in its mapping.
inline hf::LoadOptions load_options(const std::string& weights) { return {.weights = parse_weight_format(weights.empty() ? "f32" : weights)}; }

/// Applies --weights to a loaded model (nothing when it was loaded that way); returns a line for
/// the report ("weights q8: 12.3 MB streamed per decoded token").
inline std::string apply_weights(Decoder<float>& model, const std::string& weights) {
  const WeightFormat format = parse_weight_format(weights.empty() ? "f32" : weights);
  if (model.weight_format() != format) model.compress_weights(format);
  std::size_t in_place = 0;
  model.visit_linears([&](const std::string&, Linear<float>& l) { in_place += l.compressed.in_place() ? l.compressed.bytes() : 0; });
  char line[160];
  const int n = std::snprintf(line, sizeof line, "weights %s: %.2f MB streamed per decoded token", std::string(format_name(model.weight_format())).c_str(),
                              double(model.streamed_weight_bytes()) / 1e6);
  if (in_place > 0 && n > 0 && std::size_t(n) < sizeof line)
    std::snprintf(line + n, sizeof line - std::size_t(n), " (%.2f MB of it read in place from the checkpoint's mapping)", double(in_place) / 1e6);
  return line;
}

/// A bAbI-style long document (a qa1 fact hidden in background text, the question at the end) of
/// `length` byte tokens; background from `corpus_path` or Debian's fortunes. With `length_option`
/// (e.g. "--length"), a length the task cannot use is a cli::UsageError naming that option.
inline tasks::Sample babi_document(Index length, std::uint64_t seed, const std::string& corpus_path = "",
                                   const std::string& length_option = "") {
  const auto corpus = tasks::Corpus::from_path(corpus_path.empty() ? std::string(tasks::Corpus::kFortunesDir) : corpus_path);
  tasks::TaskOptions o;
  o.task = tasks::Task::fact_detection;
  o.length = length;
  try {
    return tasks::make_sample(corpus, o, seed);
  } catch (const Error& e) {  // the corpus is read above: what fails here is the length
    if (length_option.empty()) throw;
    cli::usage_error(length_option, e.what());
  }
}

/// Token ids of `text` ("1 2 3", spaces or commas), each in [0, vocab): anything else is a
/// cli::UsageError naming `option` and the offending id.
inline std::vector<std::int32_t> parse_token_ids(const std::string& text, Index vocab, const std::string& option = "--tokens") {
  std::vector<std::int32_t> ids;
  std::string spaced = text;
  for (char& ch : spaced)
    if (ch == ',') ch = ' ';
  std::istringstream in(spaced);
  for (std::string word; in >> word;) {
    std::size_t used = 0;
    long long id = 0;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || used == 0) cli::usage_error(option, "expected token ids separated by spaces, got \"" + word + "\"");
    if (id < 0 || id >= vocab)
      cli::usage_error(option, "token id " + word + " is outside the model's vocabulary [0, " + std::to_string(vocab) + ")");
    ids.push_back(std::int32_t(id));
  }
  return ids;
}

/// Validator of a --budget value: a token count (2048) or a ratio in (0, 1] (0.25), as parse_budget reads it.
inline CLI::Validator budget_validator() {
  return cli::checked_by("BUDGET", [](const std::string& text) {
    // Counts beyond 2^40 tokens are refused here: parse_budget converts the number to an integer.
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    check(!(std::abs(v) > 1e12), "budget", "expected a token count or a ratio in (0, 1], got \"", text, "\"");
    (void)parse_budget(text);
  });
}

/// KV bytes a full cache (no policy) holds after `tokens` tokens: per layer and KV head, each token's
/// key and value rows (padded for the kernels) and its position, as TokenTable stores them.
inline double full_cache_bytes(const ModelConfig& c, Index tokens) {
  return double(c.n_layers * c.n_kv_heads) * double(tokens) * double(TokenTable<float>(c.head_dim).bytes_per_token());
}

/// One line on what a cache policy kept after `state` read its tokens: tokens per KV head against
/// the tokens seen, and the state's bytes against a full cache's.
inline std::string cache_summary(const ModelConfig& c, const Decoder<float>::State& state) {
  const Index seen = state.position();
  const double mean_kept = state.cache_kept() * double(seen), full = full_cache_bytes(c, seen);
  const auto size = [](double bytes) {
    char s[32];
    std::snprintf(s, sizeof s, bytes < (1 << 20) ? "%.1f KiB" : "%.2f MiB", bytes < (1 << 20) ? bytes / 1024 : bytes / (1 << 20));
    return std::string(s);
  };
  char line[256];
  std::snprintf(line, sizeof line, "kept %.0f of %td tokens per KV head (%.1f%%), KV state %s vs %s for the full cache (%.1f%% saved)",
                mean_kept, seen, seen > 0 ? 100.0 * mean_kept / double(seen) : 0.0, size(double(state.bytes())).c_str(), size(full).c_str(),
                full > 0 ? 100.0 * (1.0 - double(state.bytes()) / full) : 0.0);
  return line;
}

}  // namespace examples
