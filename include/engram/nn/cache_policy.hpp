// The interface every KV-cache eviction policy implements (the baselines live in policies/, NAMM
// in namm/) and the cache budgets they share.
#pragma once

#include <cmath>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "engram/core/attention.hpp"
#include "engram/core/flops.hpp"
#include "engram/nn/kv_cache.hpp"

ENGRAM_NAMESPACE_BEGIN

/// A cache budget per KV head: a number of tokens, or a fraction of the tokens seen so far.
struct Budget {
  Index tokens = 0;    ///< > 0: at most this many tokens per head
  double ratio = 0.0;  ///< in (0, 1]: at most ceil(ratio * tokens seen) per head

  static Budget none() { return {}; }
  static Budget of_tokens(Index n) {
    check(n > 0, "Budget", "a token budget must be positive, got ", n);
    return {n, 0.0};
  }
  static Budget of_ratio(double r) {
    check(r > 0.0 && r <= 1.0, "Budget", "a budget ratio must be in (0, 1], got ", r);
    return {0, r};
  }
  bool limited() const { return tokens > 0 || ratio > 0.0; }
  /// Tokens allowed per head after `tokens_seen` tokens (a huge number when unlimited; at least 1).
  Index allowed(Index tokens_seen) const {
    if (tokens > 0) return tokens;
    if (ratio > 0.0) return std::max<Index>(1, Index(std::ceil(ratio * double(tokens_seen))));
    return std::numeric_limits<Index>::max() / 4;
  }
};

/// Parses a budget: an integer is a token count ("2048"), a number in (0, 1] a ratio ("0.25"),
/// empty or "none" no budget. Throws Error for anything else (0, negative, a ratio above 1, text).
inline Budget parse_budget(std::string_view text) {
  if (text.empty() || text == "none") return Budget::none();
  const std::string s(text);
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(s, &used);
  } catch (...) {
    fail("budget", "expected a token count or a ratio in (0, 1], got \"", text, "\"");
  }
  check(used == s.size(), "budget", "expected a token count or a ratio in (0, 1], got \"", text, "\"");
  if (s.find_first_of(".eE") == std::string::npos) {
    check(value >= 1 && value <= double(std::numeric_limits<Index>::max() / 4), "budget",
          "a token count must be a positive integer, got \"", text, "\"");
    return Budget::of_tokens(Index(value));
  }
  return Budget::of_ratio(value);
}

/// Per-sequence state of a policy that is not per token (per-token state lives in cache columns).
class PolicyState {
 public:
  virtual ~PolicyState() = default;
  virtual std::unique_ptr<PolicyState> clone() const = 0;
  virtual std::size_t bytes() const { return 0; }
};

/// What the decoder tells a policy about the step just processed.
struct StepInfo {
  Index n_new = 0;        ///< tokens in this step (0 for end_prompt)
  Index tokens_seen = 0;  ///< tokens of the sequence processed so far, this step included
  FlopCounter* flops = nullptr;
};

/// A KV-cache eviction policy. Policies are immutable and shared (like model weights); what changes
/// while reading a sequence lives in the PolicyState they create and in the cache columns they
/// register. Call order per step and attention layer: queries() (if needs_queries()), sink() (if
/// needs_attention()), after_layer(); then after_step() once all layers ran. The caller marks the
/// end of a prompt with Decoder::State::end_prompt(), which calls end_prompt().
///
/// When a hook runs after a step's attention, the step's tokens are the last `n_new` rows of every
/// token table (a step appends after every cached row); older rows may be in any position order,
/// since evictions reuse slots (TokenTable::evict).
template <class T>
class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual std::string name() const = 0;
  /// Whether attention must stream its probabilities to sink(). A policy that says no adds no cost.
  virtual bool needs_attention() const { return false; }
  /// Whether queries() must be called (a copy of the queries before RoPE is made for it).
  virtual bool needs_queries() const { return false; }
  /// Creates the per-sequence state (may be null).
  virtual std::unique_ptr<PolicyState> make_state(Index n_attention_layers, Index n_kv_heads) const {
    (void)n_attention_layers, (void)n_kv_heads;
    return nullptr;
  }
  /// Registers the per-token columns this policy keeps in a layer's cache (called once per layer).
  virtual void attach(LayerCache<T>& cache) const { (void)cache; }
  /// The largest number of tokens the decoder may process in its next step, given the tokens seen so
  /// far (so that steps end exactly where the policy acts); 0 means no limit.
  virtual Index max_step(Index tokens_seen) const {
    (void)tokens_seen;
    return 0;
  }
  /// The step's queries of attention layer `layer`, [n_new, n_heads * head_dim]: `raw` before RoPE,
  /// `rotated` as attention uses them (the same view without RoPE). The step's keys are already
  /// appended to `cache`; attention has not run yet. Only called when needs_queries().
  virtual void queries(Index layer, ConstView<T> raw, ConstView<T> rotated, LayerCache<T>& cache, PolicyState* state,
                       const StepInfo& step) const {
    (void)layer, (void)raw, (void)rotated, (void)cache, (void)state, (void)step;
  }
  /// Receives the probabilities of attention layer `layer` for the current step; the new tokens are
  /// already appended to `cache`. Only called when needs_attention().
  virtual ProbabilitySink<T>* sink(Index layer, LayerCache<T>& cache, PolicyState* state, const StepInfo& step) const {
    (void)layer, (void)cache, (void)state, (void)step;
    return nullptr;
  }
  /// After attention layer `layer` ran on the step; may evict from that layer's cache.
  virtual void after_layer(Index layer, LayerCache<T>& cache, PolicyState* state, const StepInfo& step) const {
    (void)layer, (void)cache, (void)state, (void)step;
  }
  /// After every layer ran on the step; may evict from any layer's cache.
  virtual void after_step(std::span<LayerCache<T>* const> caches, PolicyState* state, const StepInfo& step) const {
    (void)caches, (void)state, (void)step;
  }
  /// The prompt (everything read so far) is complete: policies that compress once, after the
  /// prompt (SnapKV, ExpectedAttention), do it here; the others ignore it.
  virtual void end_prompt(std::span<LayerCache<T>* const> caches, PolicyState* state, const StepInfo& step) const {
    (void)caches, (void)state, (void)step;
  }
};

ENGRAM_NAMESPACE_END
