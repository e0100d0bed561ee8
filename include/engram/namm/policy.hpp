// The NAMM cache policy: features stream in from the attention sink hop by hop; every n_up tokens
// the BAM scorer rates each head's tokens and the min-over-heads rule evicts, all columns at once.
#pragma once

#include <bit>
#include <memory>
#include <mutex>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/core/workspace.hpp"
#include "engram/namm/bam.hpp"
#include "engram/namm/features.hpp"
#include "engram/namm/selection.hpp"
#include "engram/nn/cache_policy.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// What one update decided for one layer (kept when NammPolicy::record is on; tests and tools read it).
template <class T>
struct LayerDecision {
  std::vector<Tensor<T>> features;          ///< per head [n, 25]
  std::vector<std::vector<T>> scores;       ///< per head, before protecting the newest token
  std::vector<std::vector<Index>> kept;     ///< per head, ascending indices into the pre-eviction cache
};

/// Pools normalisation statistics across sequences and threads (Mode::collect).
struct StatsCollector {
  NormStats stats;
  std::mutex mutex;
  void add(const NormStats& s) {
    std::lock_guard<std::mutex> lock(mutex);
    stats.merge(s);
  }
};

template <class T>
class NammPolicy;

namespace detail {
struct HopScratch {};

// Writes each query's attention into the current-hop half of every token's history and completes a
// hop (STFT + EMA) once the 16th query of the hop is done. One per (sequence, layer); heads are
// independent, so concurrent calls for different KV heads are safe.
template <class T>
class HistorySink final : public ProbabilitySink<T> {
 public:
  LayerCache<T>* cache = nullptr;
  Index step_start = 0;  // absolute index of query 0 of the current step
  const SpectrogramTransform<T>* stft = nullptr;
  T a = T(0);
  bool round_bf16 = false;

  void consume(Index kv_head, Index q_begin, Index k_begin, ConstView<T> probs) override {
    TokenTable<T>& table = cache->head(kv_head);
    View<T> hist = table.column(table.column_id(kHistoryColumn));
    check(k_begin + probs.cols() <= table.size(), "namm::HistorySink", "probabilities for keys up to ", k_begin + probs.cols(),
          " in a cache of ", table.size());
    // Blocks never straddle a hop, so each key's slots of this block are contiguous in its history row.
    const Index slot0 = (step_start + q_begin) % NammConfig::kHop;
    for (Index j = 0; j < probs.cols(); ++j) {
      T* h = hist.row(k_begin + j) + NammConfig::kHop + slot0;
      for (Index r = 0; r < probs.rows(); ++r) h[r] = round_bf16 ? to_bf16(probs(r, j)) : probs(r, j);
    }
  }

  void rows_done(Index kv_head, Index q_begin, Index n_rows) override {
    if ((step_start + q_begin + n_rows) % NammConfig::kHop != 0) return;  // the hop is not complete yet
    TokenTable<T>& table = cache->head(kv_head);
    const Index n = table.size();
    View<T> work(thread_scratch<HopScratch, 0, T>(n * NammConfig::kWindow), n, NammConfig::kWindow, NammConfig::kWindow);
    stft->complete_hop(table.column(table.column_id(kHistoryColumn)), table.column(table.column_id(kEmaColumn)), a, work);
  }

 private:
  static T to_bf16(T x) {
    const std::uint32_t b = std::bit_cast<std::uint32_t>(float(x));
    return T(std::bit_cast<float>((b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u));
  }
};

template <class T>
class NammState final : public PolicyState {
 public:
  explicit NammState(Index n_layers) : sinks(static_cast<std::size_t>(n_layers)) {}
  std::unique_ptr<PolicyState> clone() const override {
    auto s = std::make_unique<NammState>(Index(sinks.size()));
    s->updates = updates;
    return s;  // sinks are re-pointed at the caches on the next step
  }
  std::vector<HistorySink<T>> sinks;
  std::vector<LayerDecision<T>> last_update;  // per layer, when recording
  Index updates = 0;
};
}  // namespace detail

/// NAMM (Cetin et al., "An Evolved Universal Transformer Memory"): shared by all layers and heads,
/// evicts every n_up tokens. The decoder's steps are cut at n_up boundaries (max_step), as the
/// official implementation splits its prefill.
template <class T>
class NammPolicy final : public CachePolicy<T> {
 public:
  enum class Mode {
    evict,   ///< score and evict
    collect  ///< evict nothing; pool the EMA features into a StatsCollector (full-cache statistics)
  };

  NammPolicy(BamScorer<T> scorer, NormStats stats, NammConfig config = {})
      : scorer_(std::move(scorer)), stats_(stats), config_(config) {
    config_.validate();
    for (Index f = 0; f < NammConfig::kBins; ++f)
      check(std::isfinite(stats.mean[std::size_t(f)]) && stats.var[std::size_t(f)] >= 0, "NammPolicy",
            "normalisation statistics must be finite with non-negative variance (bin ", f, ")");
  }
  /// A policy that only gathers the normalisation statistics of a full-cache run.
  static NammPolicy collecting(StatsCollector& out, NammConfig config = {}) {
    NammPolicy p(BamScorer<T>(), NormStats{}, config);
    p.mode_ = Mode::collect;
    p.collector_ = &out;
    return p;
  }

  /// Keep each update's features, scores and kept indices in the state (for tests and tools).
  bool record = false;

  const NammConfig& config() const { return config_; }
  std::string name() const override { return mode_ == Mode::collect ? "namm-collect" : "namm"; }
  bool needs_attention() const override { return true; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index) const override {
    return std::make_unique<detail::NammState<T>>(n_layers);
  }
  void attach(LayerCache<T>& cache) const override {
    cache.add_column(kEmaColumn, NammConfig::kBins);
    cache.add_column(kHistoryColumn, NammConfig::kWindow);
  }
  Index max_step(Index tokens_seen) const override { return config_.n_up - tokens_seen % config_.n_up; }

  ProbabilitySink<T>* sink(Index layer, LayerCache<T>& cache, PolicyState* state, const StepInfo& step) const override {
    auto& sink = static_cast<detail::NammState<T>*>(state)->sinks.at(std::size_t(layer));
    sink.cache = &cache;
    sink.step_start = step.tokens_seen - step.n_new;
    sink.stft = &stft_;
    sink.a = T(std::pow(config_.gamma, double(NammConfig::kHop)));
    sink.round_bf16 = config_.round_bf16;
    return &sink;
  }

  void after_layer(Index, LayerCache<T>& cache, PolicyState*, const StepInfo& step) const override {
    if (!step.flops) return;
    const Index first = step.tokens_seen - step.n_new;
    const Index hops = step.tokens_seen / NammConfig::kHop - first / NammConfig::kHop;
    step.flops->add(FlopCategory::namm_features, double(hops) * double(cache.total_tokens()) * SpectrogramTransform<T>::flops_per_token());
  }

  void after_step(std::span<LayerCache<T>* const> caches, PolicyState* state, const StepInfo& step) const override {
    if (step.tokens_seen % config_.n_up == 0) update(caches, state, step.tokens_seen, step.flops);
  }

  /// Scores every layer's tokens and evicts (Mode::evict), or pools their features (Mode::collect).
  void update(std::span<LayerCache<T>* const> caches, PolicyState* state, Index tokens_seen, FlopCounter* flops) const {
    auto* st = static_cast<detail::NammState<T>*>(state);
    ++st->updates;
    if (mode_ == Mode::collect) {
      NormStats s;
      for (LayerCache<T>* c : caches)
        for (Index h = 0; h < c->n_heads(); ++h) s.add<T>(c->head(h).column(c->head(h).column_id(kEmaColumn)));
      collector_->add(s);
      return;
    }
    const Index n_layers = Index(caches.size()), n_heads = n_layers ? caches[0]->n_heads() : 0;
    std::vector<LayerDecision<T>> decisions(static_cast<std::size_t>(n_layers));
    for (auto& d : decisions) d.features.resize(std::size_t(n_heads)), d.scores.resize(std::size_t(n_heads));
    std::vector<FlopCounter> task_flops(static_cast<std::size_t>(n_layers * n_heads));
    parallel_for(0, n_layers * n_heads, [&](Index task) {
      const Index l = task / n_heads, h = task % n_heads;
      const TokenTable<T>& table = caches[std::size_t(l)]->head(h);
      Tensor<T>& x = decisions[std::size_t(l)].features[std::size_t(h)];
      x = features(table);
      auto& scores = decisions[std::size_t(l)].scores[std::size_t(h)];
      scores.resize(std::size_t(table.size()));
      scorer_.score(x.view(), scores, &task_flops[std::size_t(task)]);
    });
    const Index cap = config_.cap.limited() ? config_.cap.allowed(tokens_seen) : std::numeric_limits<Index>::max() / 4;
    for (Index l = 0; l < n_layers; ++l) {
      LayerDecision<T>& d = decisions[std::size_t(l)];
      d.kept = select_tokens<T>(d.scores, T(config_.threshold), cap);
      for (Index h = 0; h < n_heads; ++h) caches[std::size_t(l)]->head(h).gather(d.kept[std::size_t(h)]);
    }
    if (flops)
      for (const auto& f : task_flops) *flops += f;
    if (record) st->last_update = std::move(decisions);
  }

  /// BAM inputs of a head's tokens: [recency (8) | normalised spectrogram EMA (17)], [n, 25].
  Tensor<T> features(const TokenTable<T>& table) const {
    const Index n = table.size();
    Tensor<T> x({n, NammConfig::kFeatures});
    if (n == 0) return x;
    const auto pos = table.positions();
    recency_embedding<T>(pos, pos.back(), config_.max_freq, x.view().middle_cols(0, NammConfig::kRecencyDims));
    normalize_features<T>(table.column(table.column_id(kEmaColumn)), stats_,
                          x.view().middle_cols(NammConfig::kRecencyDims, NammConfig::kBins));
    return x;
  }

  /// Decisions of the most recent update of a sequence (empty unless `record` was on).
  static const std::vector<LayerDecision<T>>& last_update(PolicyState* state) {
    return static_cast<detail::NammState<T>*>(state)->last_update;
  }
  static Index updates(PolicyState* state) { return static_cast<detail::NammState<T>*>(state)->updates; }

 private:
  BamScorer<T> scorer_;
  NormStats stats_;
  NammConfig config_;
  SpectrogramTransform<T> stft_;
  Mode mode_ = Mode::evict;
  StatsCollector* collector_ = nullptr;
};

}  // namespace namm
ENGRAM_NAMESPACE_END
