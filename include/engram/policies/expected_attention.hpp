// Expected Attention (Devoto et al. 2025, arXiv 2510.00636; kvpress's ExpectedAttentionPress):
// once the prompt is read, score each cached token by the attention that future queries, modelled
// as a Gaussian fitted to the prompt's queries, are expected to give it, times its value's norm.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engram/core/gemm.hpp"
#include "engram/core/simd.hpp"
#include "engram/policies/base.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// Options of ExpectedAttentionPolicy (defaults: kvpress's).
struct ExpectedAttentionOptions {
  Index n_future_positions = 512;  ///< future query positions the RoPE rotation is averaged over
  Index n_sink = 4;                ///< first tokens: left out of the query statistics, always kept
  bool use_covariance = true;      ///< add the covariance term k^T Sigma k / (2 d)
  bool use_vnorm = true;           ///< multiply by ||v||
  double epsilon = 0.0;            ///< added to the probabilities before the value norm
};

/// Running mean and scatter (sum of centred outer products) of the queries of each query head, in
/// double; merged step by step (Chan et al.), so any split of the tokens gives the same statistics.
struct QueryStatistics {
  Index n_heads = 0, head_dim = 0;
  double count = 0;
  std::vector<double> mean;     ///< [n_heads, d]
  std::vector<double> scatter;  ///< [n_heads, d, d]

  void reset(Index heads, Index d) {
    n_heads = heads, head_dim = d, count = 0;
    mean.assign(std::size_t(heads * d), 0.0);
    scatter.assign(std::size_t(heads * d * d), 0.0);
  }
  /// Adds the rows of q [m, n_heads * d]; with_scatter = false keeps the mean only.
  template <class T>
  void add(ConstView<T> q, bool with_scatter) {
    const Index m = q.rows(), d = head_dim;
    if (m == 0) return;
    std::vector<double> mu(static_cast<std::size_t>(d)), centred(static_cast<std::size_t>(m * d));
    for (Index h = 0; h < n_heads; ++h) {
      std::fill(mu.begin(), mu.end(), 0.0);
      for (Index r = 0; r < m; ++r)
        for (Index c = 0; c < d; ++c) mu[std::size_t(c)] += double(q(r, h * d + c)) / double(m);
      double* M = mean.data() + h * d;
      double* S = scatter.data() + h * d * d;
      const double total = count + double(m), wa = count * double(m) / total;
      if (with_scatter) {
        for (Index r = 0; r < m; ++r)
          for (Index c = 0; c < d; ++c) centred[std::size_t(r * d + c)] = double(q(r, h * d + c)) - mu[std::size_t(c)];
        for (Index a = 0; a < d; ++a)
          for (Index b = 0; b < d; ++b) {
            double s = 0;
            for (Index r = 0; r < m; ++r) s += centred[std::size_t(r * d + a)] * centred[std::size_t(r * d + b)];
            S[a * d + b] += s + wa * (mu[std::size_t(a)] - M[a]) * (mu[std::size_t(b)] - M[b]);
          }
      }
      for (Index c = 0; c < d; ++c) M[c] += (mu[std::size_t(c)] - M[c]) * double(m) / total;
    }
    count += double(m);
  }
};

namespace detail {
class ExpectedAttentionState final : public PolicyState {
 public:
  explicit ExpectedAttentionState(Index n_layers) : layers(static_cast<std::size_t>(n_layers)) {}
  std::unique_ptr<PolicyState> clone() const override { return std::make_unique<ExpectedAttentionState>(*this); }
  std::size_t bytes() const override {
    std::size_t b = 0;
    for (const auto& s : layers) b += (s.mean.size() + s.scatter.size()) * sizeof(double);
    return b;
  }
  std::vector<QueryStatistics> layers;
};
}  // namespace detail

/// Expected-attention scores of one KV head's tokens. mean [G, d] and cov [G, d, d] (may be empty
/// without the covariance term) are the statistics of the G query heads reading this KV head, after
/// the averaged future rotation; keys/values [n, d] as cached. For each query head
///   z_i = mean . k_i / sqrt(d) + k_i^T cov k_i / (2 d),   p = softmax over the non-sink tokens of z,
/// then s_i = (mean over the group of p_i + epsilon) * ||v_i|| (or without the norm). Sink tokens
/// (sink[i] true) get +infinity. Returns s [n].
template <class T>
std::vector<double> expected_attention_scores(ConstView<T> keys, ConstView<T> values, std::span<const double> mean,
                                              std::span<const double> cov, Index group, const std::vector<bool>& sink,
                                              const ExpectedAttentionOptions& o) {
  const Index n = keys.rows(), d = keys.cols();
  std::vector<double> score(static_cast<std::size_t>(n), 0.0), z(static_cast<std::size_t>(n));
  Tensor<T> sigma({d, d}), ks({n, d});
  for (Index g = 0; g < group; ++g) {
    const double* mu = mean.data() + g * d;
    if (!cov.empty()) {  // ks = K Sigma (Sigma symmetric), then z_i gets k_i . ks_i / (2 d)
      for (Index a = 0; a < d; ++a)
        for (Index b = 0; b < d; ++b) sigma(a, b) = T(cov[std::size_t((g * d + a) * d + b)]);
      matmul<T>(keys, sigma.view(), ks.view());
    }
    double zmax = -std::numeric_limits<double>::infinity();
    for (Index i = 0; i < n; ++i) {
      if (sink[std::size_t(i)]) continue;
      double s = 0;
      for (Index c = 0; c < d; ++c) s += mu[c] * double(keys(i, c));
      s /= std::sqrt(double(d));
      if (!cov.empty()) s += double(simd::dot(keys.row(i), ks.row(i), d)) / (2.0 * double(d));
      z[std::size_t(i)] = s;
      zmax = std::max(zmax, s);
    }
    double total = 0;
    for (Index i = 0; i < n; ++i)
      if (!sink[std::size_t(i)]) total += (z[std::size_t(i)] = std::exp(z[std::size_t(i)] - zmax));
    for (Index i = 0; i < n; ++i)
      if (!sink[std::size_t(i)]) score[std::size_t(i)] += z[std::size_t(i)] / total / double(group);
  }
  for (Index i = 0; i < n; ++i) {
    if (sink[std::size_t(i)]) {
      score[std::size_t(i)] = std::numeric_limits<double>::infinity();
      continue;
    }
    score[std::size_t(i)] += o.epsilon;
    if (o.use_vnorm) score[std::size_t(i)] *= std::sqrt(double(simd::dot(values.row(i), values.row(i), d)));
  }
  return score;
}

/// The RoPE rotation averaged over positions [first, first + count): R_bar = mean_p R(p), applied
/// in place to the rows of x [m, d] (x_r <- R_bar x_r). Without RoPE it is the identity.
inline void apply_average_rotation(View<double> x, const KeyRotation& rot, std::int64_t first, Index count) {
  if (!rot.rope()) return;
  const Index half = Index(rot.inv_freq.size());
  RopeTable<double> mean;
  mean.cos = Tensor<double>({1, half});
  mean.sin = Tensor<double>({1, half});
  for (Index i = 0; i < half; ++i) {
    double c = 0, s = 0;
    for (Index p = 0; p < count; ++p) {
      const double angle = double(first + p) * rot.inv_freq[std::size_t(i)];
      c += std::cos(angle), s += std::sin(angle);
    }
    mean.cos(0, i) = c / double(count), mean.sin(0, i) = s / double(count);
  }
  // A rotation with (mean cos, mean sin) is exactly R_bar: each pair's 2x2 block is linear in both.
  for (Index r = 0; r < x.rows(); ++r) apply_rope<double>(x.middle_rows(r, 1), 1, x.cols(), mean, rot.pairing, 0);
}

/// ExpectedAttention. Compresses once per prompt, when the caller marks its end
/// (Decoder::State::end_prompt()); tokens read afterwards are appended uncompressed until the next
/// end_prompt. While reading, the queries before RoPE of every token but the first n_sink are
/// pooled into a mean and covariance per query head (double). At end_prompt, per layer whose cache
/// exceeds the budget: both are rotated by the RoPE rotation averaged over the next
/// n_future_positions positions (mean <- R_bar mean, cov <- R_bar cov R_bar^T), every KV head's
/// tokens are scored by expected_attention_scores(), and each head keeps its n_sink first tokens
/// and the best others up to the budget (ties: the older). The statistics then restart.
template <class T>
class ExpectedAttentionPolicy final : public detail::BudgetPolicy<T> {
 public:
  explicit ExpectedAttentionPolicy(Budget b, ExpectedAttentionOptions o = {}) : detail::BudgetPolicy<T>(b, "ExpectedAttentionPolicy"), o_(o) {
    check(o.n_future_positions > 0, "ExpectedAttentionPolicy", "n_future_positions must be positive, got ", o.n_future_positions);
    check(o.n_sink >= 0, "ExpectedAttentionPolicy", "n_sink must be >= 0, got ", o.n_sink);
    check(o.epsilon >= 0, "ExpectedAttentionPolicy", "epsilon must be >= 0, got ", o.epsilon);
  }
  std::string name() const override { return "expected_attention"; }
  const ExpectedAttentionOptions& options() const { return o_; }
  bool needs_queries() const override { return true; }
  std::unique_ptr<PolicyState> make_state(Index n_layers, Index) const override {
    return std::make_unique<detail::ExpectedAttentionState>(n_layers);
  }

  void queries(Index layer, ConstView<T> raw, ConstView<T>, LayerCache<T>& c, PolicyState* state, const StepInfo& step) const override {
    QueryStatistics& s = static_cast<detail::ExpectedAttentionState*>(state)->layers.at(std::size_t(layer));
    const Index d = c.head(0).head_dim();
    if (s.n_heads == 0) s.reset(raw.cols() / d, d);
    const Index first = step.tokens_seen - step.n_new;  // position of row 0
    const Index skip = std::clamp<Index>(o_.n_sink - first, 0, raw.rows());
    s.add<T>(raw.middle_rows(skip, raw.rows() - skip), o_.use_covariance);
  }

  void end_prompt(std::span<LayerCache<T>* const> caches, PolicyState* state, const StepInfo& step) const override {
    auto& stats = static_cast<detail::ExpectedAttentionState*>(state)->layers;
    const Index budget = this->budget_.allowed(step.tokens_seen);
    for (std::size_t l = 0; l < caches.size(); ++l) {
      QueryStatistics& s = stats.at(l);
      if (caches[l]->max_size() > budget && s.count > 0) compress(*caches[l], s, budget, step);
      if (s.n_heads > 0) s.reset(s.n_heads, s.head_dim);
    }
  }

  /// Statistics after the averaged future rotation, for the query heads of KV head `kv`: mean [G, d]
  /// and covariance [G, d, d] (empty without use_covariance). For tests and tools.
  std::pair<std::vector<double>, std::vector<double>> rotated_statistics(const QueryStatistics& s, const KeyRotation& rot,
                                                                         Index kv, Index group, Index tokens_seen) const {
    const Index d = s.head_dim;
    Tensor<double> mu({group, d});
    for (Index g = 0; g < group; ++g)
      for (Index c = 0; c < d; ++c) mu(g, c) = s.mean[std::size_t((kv * group + g) * d + c)];
    apply_average_rotation(mu.view(), rot, tokens_seen, o_.n_future_positions);
    std::vector<double> mean(std::size_t(group * d)), cov;
    for (Index g = 0; g < group; ++g)
      for (Index c = 0; c < d; ++c) mean[std::size_t(g * d + c)] = mu(g, c);
    if (o_.use_covariance) {
      cov.resize(std::size_t(group * d * d));
      Tensor<double> m({d, d});
      for (Index g = 0; g < group; ++g) {
        const double* S = s.scatter.data() + (kv * group + g) * d * d;
        for (Index a = 0; a < d; ++a)
          for (Index b = 0; b < d; ++b) m(a, b) = S[a * d + b] / s.count;  // population covariance
        apply_average_rotation(m.view(), rot, tokens_seen, o_.n_future_positions);  // rows: Sigma R^T
        Tensor<double> mt({d, d});
        for (Index a = 0; a < d; ++a)
          for (Index b = 0; b < d; ++b) mt(a, b) = m(b, a);  // R Sigma
        apply_average_rotation(mt.view(), rot, tokens_seen, o_.n_future_positions);  // rows: R Sigma R^T (symmetric)
        for (Index a = 0; a < d; ++a)
          for (Index b = 0; b < d; ++b) cov[std::size_t((g * d + a) * d + b)] = mt(a, b);
      }
    }
    return {std::move(mean), std::move(cov)};
  }

 private:
  void compress(LayerCache<T>& c, const QueryStatistics& s, Index budget, const StepInfo& step) const {
    const Index group = s.n_heads / c.n_heads();
    for (Index h = 0; h < c.n_heads(); ++h) {
      TokenTable<T>& t = c.head(h);
      if (t.size() <= budget) continue;
      const auto [mean, cov] = rotated_statistics(s, c.rotation, h, group, step.tokens_seen);
      std::vector<bool> sink(std::size_t(t.size()));
      for (Index i = 0; i < t.size(); ++i) sink[std::size_t(i)] = t.position(i) < std::int64_t(o_.n_sink);
      Tensor<T> ks, vs;  // the keys and values as T, for a 16-bit cache
      const auto score = expected_attention_scores<T>(t.keys_as(ks), t.values_as(vs), mean, cov, group, sink, o_);
      detail::evict_lowest(t, t.size() - budget, [&](Index i) { return score[std::size_t(i)]; }, [](Index) { return true; });
    }
  }

  ExpectedAttentionOptions o_;
};

}  // namespace policies
ENGRAM_NAMESPACE_END
