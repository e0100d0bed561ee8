// ExpectedAttention and KeyDiff against the independent PyTorch references of kvpress's rules
// (tests/reference/kv_press_ref.py, fixture tests/fixtures/policies/kv_press.safetensors): query
// statistics after the averaged future rotation, scores and kept sets, one layer with GQA.
#include <numeric>

#include "engram/io/checkpoint.hpp"
#include "engram/policies/expected_attention.hpp"
#include "engram/policies/keydiff.hpp"
#include "policy_harness.hpp"

using namespace engram;
using namespace engram::policies;

namespace {
constexpr Index kT = 40, kHeads = 4, kKv = 2, kD = 8, kGroup = 2, kKept = 16;

const Checkpoint& fixture() {
  static const Checkpoint f = Checkpoint::open(test::fixture("policies/kv_press.safetensors"));
  return f;
}
// [heads, T, d] per head -> [T, heads * d], the layout of a projection.
Tensor<float> by_token(const Tensor<double>& t) {
  const Index heads = t.dim(0), n = t.dim(1), d = t.dim(2);
  Tensor<float> out({n, heads * d});
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < n; ++i)
      for (Index c = 0; c < d; ++c) out(i, h * d + c) = float(t.mat(h)(i, c));
  return out;
}
std::vector<Index> kept_of(const Tensor<std::int64_t>& t, Index head) {
  std::vector<Index> k;
  for (Index i = 0; i < t.cols(); ++i) k.push_back(Index(t(head, i)));
  return k;
}
double max_rel(std::span<const double> got, std::span<const double> want) {
  double err = 0, scale = 1e-300;
  for (std::size_t i = 0; i < want.size(); ++i) err = std::max(err, std::abs(got[i] - want[i])), scale = std::max(scale, std::abs(want[i]));
  return err / scale;
}
// Statistics and scores of the given query rows against the fixture, for prefix `p` ("ea" or "ea_recent").
void check_statistics(const QueryStatistics& s, const ExpectedAttentionPolicy<float>& policy, const KeyRotation& rot, const std::string& p,
                      const Tensor<float>& keys, const Tensor<float>& values) {
  const auto& f = fixture();
  const auto mu = f.read<double>(p + ".mu"), cov = f.read<double>(p + ".cov"), scores = f.read<double>(p + ".scores");
  for (Index kv = 0; kv < kKv; ++kv) {
    INFO(p << ", KV head " << kv);
    const auto [mean, c] = policy.rotated_statistics(s, rot, kv, kGroup, kT);
    std::vector<double> want_mean, want_cov;
    for (Index g = 0; g < kGroup; ++g)
      for (Index a = 0; a < kD; ++a) {
        want_mean.push_back(mu(kv * kGroup + g, a));
        for (Index b = 0; b < kD; ++b) want_cov.push_back(cov.mat(kv * kGroup + g)(a, b));
      }
    CHECK(max_rel(mean, want_mean) <= 1e-6);
    CHECK(max_rel(c, want_cov) <= 1e-6);
    std::vector<bool> sink(static_cast<std::size_t>(kT));
    for (Index i = 0; i < 4; ++i) sink[std::size_t(i)] = true;
    const auto got = expected_attention_scores<float>(keys.view().middle_cols(kv * kD, kD), values.view().middle_cols(kv * kD, kD),
                                                      mean, c, kGroup, sink, policy.options());
    std::vector<double> want(static_cast<std::size_t>(kT - 4));
    for (Index i = 4; i < kT; ++i) want[std::size_t(i - 4)] = scores(kv, i);
    CHECK(max_rel(std::span(got).subspan(4), want) <= 1e-5);  // float keys
    for (Index i = 0; i < 4; ++i) CHECK(std::isinf(got[std::size_t(i)]));  // the reference's "max + 1": never evicted
  }
}
}  // namespace

TEST_CASE("ExpectedAttention matches the kvpress reference: statistics, scores, kept sets", "[policies][expected_attention][golden]") {
  const auto& f = fixture();
  const Tensor<float> q = by_token(f.read<double>("queries_prerope")), keys = by_token(f.read<double>("keys")),
                      values = by_token(f.read<double>("values"));
  REQUIRE(q.rows() == kT);
  REQUIRE(q.cols() == kHeads * kD);
  const ExpectedAttentionPolicy<float> policy(Budget::of_tokens(kKept));
  test::PolicyLayer layer(policy, kKv, kD);
  layer.cache.rotation = KeyRotation{rope_inv_freq(kD, 1e4), RopePairing::rotate_half};
  const std::vector<Index> cuts = {0, 13, 30, kT};  // the prompt in uneven chunks
  for (std::size_t s = 0; s + 1 < cuts.size(); ++s) {
    const Index at = cuts[s], len = cuts[s + 1] - cuts[s];
    layer.step(keys.view().middle_rows(at, len), values.view().middle_rows(at, len), nullptr, q.view().middle_rows(at, len));
  }
  const auto& stats = static_cast<const policies::detail::ExpectedAttentionState*>(layer.state.get())->layers[0];
  CHECK(stats.count == double(kT - 4));  // every query but the 4 sinks'
  check_statistics(stats, policy, layer.cache.rotation, "ea", keys, values);
  layer.end_prompt();
  const auto kept = f.read<std::int64_t>("ea.kept");
  for (Index kv = 0; kv < kKv; ++kv) {
    INFO("KV head " << kv);
    CHECK(layer.kept(kv) == kept_of(kept, kv));
  }
}

TEST_CASE("ExpectedAttention's statistics of a recent window match the kvpress reference", "[policies][expected_attention][golden]") {
  // The reference's "ea_recent": statistics of the last 10 queries only (as a decoding press fed by
  // recent queries); same scoring. Checks the building blocks with another window.
  const auto& f = fixture();
  const Tensor<float> q = by_token(f.read<double>("queries_prerope")), keys = by_token(f.read<double>("keys")),
                      values = by_token(f.read<double>("values"));
  const ExpectedAttentionPolicy<float> policy(Budget::of_tokens(kKept));
  QueryStatistics s;
  s.reset(kHeads, kD);
  s.add<float>(q.view().middle_rows(30, 4), true);
  s.add<float>(q.view().middle_rows(34, 6), true);
  const KeyRotation rot{rope_inv_freq(kD, 1e4), RopePairing::rotate_half};
  check_statistics(s, policy, rot, "ea_recent", keys, values);
  const auto kept = f.read<std::int64_t>("ea_recent.kept");
  const auto scores = f.read<double>("ea_recent.scores");
  for (Index kv = 0; kv < kKv; ++kv) {  // top 16 of the reference's own scores = its kept set (sanity of the reading)
    std::vector<Index> order(static_cast<std::size_t>(kT));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](Index a, Index b) { return scores(kv, a) > scores(kv, b); });
    order.resize(kKept);
    std::sort(order.begin(), order.end());
    CHECK(order == kept_of(kept, kv));
  }
}

TEST_CASE("KeyDiff matches the kvpress reference: scores and kept sets", "[policies][keydiff][golden]") {
  const auto& f = fixture();
  const Tensor<float> keys = by_token(f.read<double>("keys"));
  const auto scores = f.read<double>("keydiff.scores");
  const auto kept = f.read<std::int64_t>("keydiff.kept");
  for (Index kv = 0; kv < kKv; ++kv) {
    INFO("KV head " << kv);
    const auto got = keydiff_scores<float>(keys.view().middle_cols(kv * kD, kD));
    std::vector<double> want;
    for (Index i = 0; i < kT; ++i) want.push_back(scores(kv, i));
    CHECK(max_rel(got, want) <= 1e-5);
    // kvpress keeps the top 16 scores; KeyDiffPolicy additionally protects the newest token (39):
    // it keeps 39 and the top 15 of the others.
    std::vector<Index> order(static_cast<std::size_t>(kT - 1));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](Index a, Index b) { return want[std::size_t(a)] > want[std::size_t(b)]; });
    std::vector<Index> expected(order.begin(), order.begin() + (kKept - 1));
    expected.push_back(kT - 1);
    std::sort(expected.begin(), expected.end());
    const auto reference = kept_of(kept, kv);
    if (std::find(reference.begin(), reference.end(), kT - 1) != reference.end()) CHECK(expected == reference);
    const KeyDiffPolicy<float> policy(Budget::of_tokens(kKept));
    test::PolicyLayer layer(policy, 1, kD);
    Tensor<float> v({kT, kD});
    layer.step(keys.view().middle_cols(kv * kD, kD), v.view());  // the whole prompt in one step, as a prefill press
    CHECK(layer.kept() == expected);
  }
}
