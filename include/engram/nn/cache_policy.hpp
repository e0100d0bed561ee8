// The interface every KV-cache eviction policy implements (NAMM and the baselines live in namm/).
#pragma once

#include <memory>
#include <span>
#include <string>

#include "engram/core/attention.hpp"
#include "engram/core/flops.hpp"
#include "engram/nn/kv_cache.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Per-sequence state of a policy that is not per token (per-token state lives in cache columns).
class PolicyState {
 public:
  virtual ~PolicyState() = default;
  virtual std::unique_ptr<PolicyState> clone() const = 0;
  virtual std::size_t bytes() const { return 0; }
};

/// What the decoder tells a policy about the step just processed.
struct StepInfo {
  Index n_new = 0;        ///< tokens in this step
  Index tokens_seen = 0;  ///< tokens of the sequence processed so far, this step included
  FlopCounter* flops = nullptr;
};

/// A KV-cache eviction policy. Policies are immutable and shared (like model weights); what changes
/// while reading a sequence lives in the PolicyState they create and in the cache columns they
/// register. Call order per step: sink() for each attention layer (if needs_attention()), then
/// after_layer() for that layer, and after_step() once all layers ran.
template <class T>
class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual std::string name() const = 0;
  /// Whether attention must stream its probabilities to sink(). A policy that says no adds no cost.
  virtual bool needs_attention() const { return false; }
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
};

ENGRAM_NAMESPACE_END
