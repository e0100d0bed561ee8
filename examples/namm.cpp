// engram-namm: reads a long input through a decoder with a KV-cache policy (NAMM or a baseline) and
// reports, every n_up tokens, the cache per layer and what it saves against full attention.
#include <chrono>

#include "example_util.hpp"

using namespace engram;

namespace {
const char* kUsage =
    "usage: engram-namm [options]\n"
    "  --policy P         namm | h2o | knorm | streaming | snapkv | tova | recency | none (default namm)\n"
    "  --budget B         tokens per KV head (2048) or a ratio of the tokens seen (0.25); NAMM: optional cap\n"
    "  --namm-weights F   NAMM weights (convert_namm_checkpoint.py, engram-namm-evolve); default: random\n"
    "  --namm-seed S      seed of the random NAMM weights (default 1)\n"
    "  --n-up N           NAMM update interval (default 512)\n"
    "  --file F           input text file (one token per byte); default: a generated bAbI-style document\n"
    "  --length N         tokens of the generated document (default 8192)\n"
    "  --corpus PATH      background text of the generated document (default Debian's fortunes)\n"
    "  --model DIR        Hugging Face model directory (default: a random byte-level model)\n"
    "  --threads T        threads (default: all)\n";

// Analytic attention FLOPs of a full cache over `tokens` tokens (both products, causal).
double full_attention_flops(const ModelConfig& c, Index tokens) {
  return 2.0 * double(c.n_layers * c.n_heads) * flops::attention_product(flops::causal_pairs(tokens, tokens), c.head_dim);
}
// KV bytes a full cache would hold: keys and values (padded rows) and positions.
double full_cache_bytes(const ModelConfig& c, Index tokens) {
  return double(c.n_layers * c.n_kv_heads) * double(tokens) * double(2 * padded_cols<float>(c.head_dim) * sizeof(float) + 64);
}
}  // namespace

int main(int argc, char** argv) {
  examples::Args args(argc, argv,
                      {{"policy", "namm"}, {"budget", ""}, {"namm-weights", ""}, {"namm-seed", "1"}, {"n-up", "512"},
                       {"file", ""}, {"length", "8192"}, {"corpus", ""}, {"model", ""}, {"threads", "0"}},
                      kUsage);
  try {
    if (args.integer("threads") > 0) set_num_threads(int(args.integer("threads")));
    const auto model = examples::load_or_default(args.str("model"));
    std::vector<std::int32_t> tokens;
    std::string what;
    if (!args.str("file").empty()) {
      tokens = examples::file_tokens(args.str("file"));
      what = args.str("file");
    } else {
      const auto doc = examples::babi_document(args.integer("length"), 7, args.str("corpus"));
      tokens = doc.tokens;
      what = "generated bAbI-style document (fact \"" + doc.info.facts[0] + "\" at token " +
             std::to_string(doc.info.fact_spans[0].begin) + ", question \"" + doc.info.question + "\")";
    }
    check(!tokens.empty(), "input", "no tokens");
    namm::NammWeights<float> weights;
    if (!args.str("namm-weights").empty()) {
      weights = namm::load_namm<float>(args.str("namm-weights"));
    } else {
      weights.theta = Tensor<float>({namm::BamScorer<float>::kParams});
      std::mt19937_64 rng(std::uint64_t(args.integer("namm-seed")));
      std::normal_distribution<float> normal(0.f, 0.05f);
      for (Index i = 0; i < weights.theta.numel(); ++i) weights.theta[i] = normal(rng);
      weights.stats.var.fill(1.0);
    }
    weights.config.n_up = args.integer("n-up");
    const auto policy = namm::make_policy<float>(args.str("policy"), namm::parse_budget(args.str("budget")), &weights);
    const ModelConfig& c = model.config;
    std::printf("input: %zu tokens, %s\npolicy: %s, model: d=%td, %td layers, %td heads / %td KV heads\n\n", tokens.size(),
                what.c_str(), policy ? policy->name().c_str() : "none (full cache)", c.d_model, c.n_layers, c.n_heads, c.n_kv_heads);
    std::printf("%8s  %-28s %10s %10s %10s %10s %9s\n", "tokens", "cache per layer (max/head)", "KV MiB", "full MiB", "GFLOP", "full GF", "ms/token");

    auto state = model.make_state(policy.get());
    const Index report_every = args.integer("n-up");
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
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
