// Each baseline's rule pinned on a hand-built case or against a slow reference written from its
// paper: H2O (recent window + heavy hitters, double sums past 1e5 queries), KNorm, KeyDiff,
// StreamingLLM (sinks + window, positions re-indexed in the cache), SnapKV (once, after the prompt,
// observation window, pooling, never over budget), TOVA, Recency, ExpectedAttention; bad input.
#include <numeric>

#include "engram/policies/factory.hpp"
#include "policy_harness.hpp"

using namespace engram;
using namespace engram::policies;
using test::PolicyLayer;
using test::rows_of;

namespace {
// n tokens of `heads` KV heads (width d), key rows from `key`, values from `value`.
std::pair<Tensor<float>, Tensor<float>> tokens(Index n, Index heads, Index d, std::uint64_t seed) {
  return {test::random_tensor<float>({n, heads * d}, seed), test::random_tensor<float>({n, heads * d}, seed + 1000)};
}
}  // namespace

TEST_CASE("H2O keeps the recent half of the budget and the heaviest accumulated hitters", "[policies][h2o]") {
  const H2OPolicy<float> p(Budget::of_tokens(4));
  PolicyLayer layer(p, 1, 4);
  const auto [k, v] = tokens(8, 1, 4, 1);
  // Token 1 is a heavy hitter over two queries, token 5 over one; recent = tokens 6 and 7.
  const auto probs = rows_of({{0.f, .6f, 0.f, .1f, 0.f, .1f, .1f, .1f}, {0.f, .3f, .1f, 0.f, 0.f, .5f, 0.f, .1f}});
  layer.step(k.view(), v.view(), &probs);
  CHECK(layer.kept() == std::vector<Index>{1, 5, 6, 7});
  // Accumulation carries over steps: token 5 (0.6 so far) loses its place to the next heavy hitter
  // once the recent window has moved past it.
  const auto [k2, v2] = tokens(2, 1, 4, 2);
  std::vector<float> row(10, 0.f);  // probabilities over the 4 cached rows + 2 new, by row index
  const auto pos = layer.cache.head(0).positions();
  for (std::size_t r = 0; r < pos.size(); ++r) row[r] = pos[r] == 6 ? 0.9f : 0.f;  // token 6 becomes heavy
  row[4] = 0.05f, row[5] = 0.05f;
  const auto more = rows_of({std::vector<float>(row.begin(), row.begin() + 6), std::vector<float>(row.begin(), row.begin() + 6)});
  layer.step(k2.view(), v2.view(), &more);
  CHECK(layer.kept() == std::vector<Index>{1, 6, 8, 9});  // 1 (0.9) and 6 (1.8 + 0.1) beat 5 (0.6) and 7 (0.2)
}

TEST_CASE("H2O sums attention in double: increments survive beyond 1e5 queries", "[policies][h2o]") {
  // Budget 3 with one recent slot: after token 3 arrives, one of tokens 0, 1, 2 goes, the least
  // accumulated. Token 0 receives 1.005 early; token 1 receives 1.0 early and then 150,000 queries
  // of 5e-8 each (exact total 1.0075). In float, 1.0f + 5e-8f == 1.0f, so token 1 would stay at 1.0
  // and be evicted instead of token 0.
  float lost = 1.0f;
  for (int i = 0; i < 1000; ++i) lost += 5e-8f;
  REQUIRE(lost == 1.0f);  // the failure mode this test guards against
  const H2OPolicy<float> p(Budget::of_tokens(3), 1.0 / 3.0);
  PolicyLayer layer(p, 1, 4);
  const auto [k, v] = tokens(3, 1, 4, 3);
  layer.step(k.view(), v.view());  // no probabilities yet: nothing over budget
  const StepInfo info{1, 3, nullptr};
  ProbabilitySink<float>* sink = p.sink(0, layer.cache, layer.state.get(), info);
  REQUIRE(sink != nullptr);
  const auto early = rows_of({{.5f, .5f, 0.f}, {.5f, 0.f, .5f}, {.005f, .5f, .495f}});
  sink->consume(0, 0, 0, early.view());
  constexpr Index kQueries = 150000;
  const auto tiny = rows_of({{0.f, 5e-8f, 1.f - 5e-8f}});
  for (Index q = 0; q < kQueries; ++q) sink->consume(0, 3 + q, 0, tiny.view());
  const auto acc = layer.cache.head(0).column<double>(layer.cache.head(0).column_id(H2OPolicy<float>::kColumn));
  CHECK(acc(1, 0) == Approx(1.0 + double(kQueries) * double(5e-8f)).epsilon(1e-12));
  const auto [k3, v3] = tokens(1, 1, 4, 4);
  layer.step(k3.view(), v3.view());
  CHECK(layer.kept() == std::vector<Index>{1, 2, 3});
}

TEST_CASE("KNorm keeps the lowest key norms and the newest token, whatever the step sizes", "[policies][knorm]") {
  const KNormPolicy<float> p(Budget::of_tokens(3));
  CHECK_FALSE(p.needs_attention());
  PolicyLayer layer(p, 2, 4);
  const std::vector<float> norms = {5.f, 1.f, 4.f, 0.5f, 3.f, 9.f};  // the newest (9) stays anyway
  std::vector<std::vector<float>> keys;
  for (float n : norms) keys.push_back({n, 0.f, 0.f, 0.f});
  layer.step_keys(keys);
  CHECK(layer.kept(0) == std::vector<Index>{1, 3, 5});
  CHECK(layer.kept(1) == std::vector<Index>{1, 3, 5});
  // The greedy rule keeps the newest token and the budget - 1 lowest norms of all the others, so any
  // split of the same stream into steps keeps the same set.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(0.1f, 10.f);
  std::vector<std::vector<float>> stream;
  for (int i = 0; i < 60; ++i) stream.push_back({U(rng), U(rng), 0.f, U(rng)});
  std::vector<Index> order(59);
  std::iota(order.begin(), order.end(), 0);
  auto norm2 = [&](Index i) {
    float s = 0;
    for (float x : stream[std::size_t(i)]) s += x * x;
    return s;
  };
  std::sort(order.begin(), order.end(), [&](Index a, Index b) { return norm2(a) < norm2(b); });
  std::vector<Index> expected(order.begin(), order.begin() + 7);
  expected.push_back(59);
  std::sort(expected.begin(), expected.end());
  for (const std::vector<Index>& sizes : {std::vector<Index>{60}, std::vector<Index>(60, 1), std::vector<Index>{7, 1, 13, 2, 30, 7}}) {
    const KNormPolicy<float> q(Budget::of_tokens(8));
    PolicyLayer l(q, 1, 4);
    Index at = 0;
    for (Index s : sizes) {
      l.step_keys(std::vector<std::vector<float>>(stream.begin() + at, stream.begin() + at + s));
      at += s;
    }
    CHECK(l.kept() == expected);
  }
}

TEST_CASE("KeyDiff evicts the keys most similar to the mean key direction", "[policies][keydiff]") {
  // Anchor = mean of unit keys ~ (0.75, 0.25): token 2 points most along it, token 1 least.
  const KeyDiffPolicy<float> p(Budget::of_tokens(3));
  CHECK_FALSE(p.needs_attention());
  PolicyLayer layer(p, 1, 4);
  layer.step_keys({{1.f, 0.f, 0.f, 0.f}, {0.f, 1.f, 0.f, 0.f}, {2.f, .2f, 0.f, 0.f}, {1.f, -.1f, 0.f, 0.f}});
  CHECK(layer.kept() == std::vector<Index>{0, 1, 3});
  // Decode token by token against a from-scratch reference: at every step the evicted token is the
  // non-newest one with the largest cosine to the mean unit key of the cache, newcomer included.
  const KeyDiffPolicy<float> q(Budget::of_tokens(6));
  PolicyLayer l(q, 1, 8);
  const auto keys = test::random_tensor<float>({40, 8}, 9);
  std::vector<Index> cached;
  for (Index t = 0; t < 40; ++t) {
    Tensor<float> kt({1, 8}), vt({1, 8});
    std::copy_n(keys.row(t), 8, kt.row(0));
    cached.push_back(t);
    if (Index(cached.size()) > 6) {  // the reference picks the victim
      std::vector<double> anchor(8, 0.0);
      for (Index i : cached) {
        double n = 0;
        for (Index c = 0; c < 8; ++c) n += double(keys(i, c)) * keys(i, c);
        for (Index c = 0; c < 8; ++c) anchor[std::size_t(c)] += keys(i, c) / std::sqrt(n);
      }
      double best = -2;
      Index victim = -1;
      for (Index i : cached) {
        if (i == t) continue;
        double dot = 0, n = 0, a = 0;
        for (Index c = 0; c < 8; ++c) dot += keys(i, c) * anchor[std::size_t(c)], n += double(keys(i, c)) * keys(i, c), a += anchor[std::size_t(c)] * anchor[std::size_t(c)];
        const double cosine = dot / std::sqrt(n * a);
        if (cosine > best) best = cosine, victim = i;
      }
      cached.erase(std::find(cached.begin(), cached.end(), victim));
    }
    l.step(kt.view(), vt.view());
    INFO("token " << t);
    REQUIRE(l.kept() == cached);
  }
  // keydiff_scores is the published score: -cos(k_i, mean_j k_j / |k_j|).
  const auto s = keydiff_scores<float>(keys.view().middle_rows(0, 5));
  CHECK(s.size() == 5);
  for (double x : s) CHECK((x >= -1.0 && x <= 1.0));
}

TEST_CASE("StreamingLLM keeps the sink tokens and the recent window", "[policies][streaming]") {
  const StreamingPolicy<float> p(Budget::of_tokens(5), 2);
  PolicyLayer layer(p, 1, 4);
  const auto [k, v] = tokens(10, 1, 4, 5);
  layer.step(k.view(), v.view());
  CHECK(layer.kept() == std::vector<Index>{0, 1, 7, 8, 9});
  for (Index t = 0; t < 6; ++t) {
    const auto [k1, v1] = tokens(1, 1, 4, 10 + std::uint64_t(t));
    layer.step(k1.view(), v1.view());
  }
  CHECK(layer.kept() == std::vector<Index>{0, 1, 13, 14, 15});
}

namespace {
// Attention output [1, H * d] of query q (raw, rotated here to position q_pos) over raw keys rotated
// to `key_positions`, values as given; 1 KV head, H query heads.
Tensor<float> attend(const std::vector<double>& inv_freq, ConstView<float> q_raw, std::int64_t q_pos, ConstView<float> keys_raw,
                     const std::vector<std::int64_t>& key_positions, ConstView<float> values, Index heads) {
  const Index d = keys_raw.cols();
  Tensor<float> q = Tensor<float>::from_view(q_raw), k = Tensor<float>::from_view(keys_raw), out({1, heads * d});
  const std::vector<std::int64_t> qp = {q_pos};
  apply_rope<float>(q.view(), heads, d, make_rope_table<float>(inv_freq, qp), RopePairing::rotate_half);
  apply_rope<float>(k.view(), 1, d, make_rope_table<float>(inv_freq, key_positions), RopePairing::rotate_half);
  const std::vector<ConstView<float>> ks = {k.view()}, vs = {values};
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = heads, in.head_dim = d;
  attention<float>(in);
  return out;
}
}  // namespace

TEST_CASE("StreamingLLM re-indexes positions in the cache: attention equals the tokens at contiguous positions", "[policies][streaming]") {
  // 1 KV head of width 8 read by 2 query heads; 2 sinks, budget 6; 40 tokens, then a query at 40.
  constexpr Index d = 8, heads = 2, n = 40, sinks = 2, budget = 6;
  const auto inv_freq = rope_inv_freq(d, 10000.0);
  const auto raw_k = test::random_tensor<float>({n + 1, d}, 21), values = test::random_tensor<float>({n + 1, d}, 22);
  const auto raw_q = test::random_tensor<float>({1, heads * d}, 23);
  for (const std::vector<Index>& steps : {std::vector<Index>(n, 1), std::vector<Index>{5, 5, 5, 5, 5, 5, 5, 5}, std::vector<Index>{13, 27}}) {
    const StreamingPolicy<float> p(Budget::of_tokens(budget), sinks);
    PolicyLayer layer(p, 1, d);
    layer.cache.rotation = KeyRotation{inv_freq, RopePairing::rotate_half};
    Index at = 0;
    for (Index s : steps) {  // keys are cached rotated at their absolute positions, as the decoder does
      Tensor<float> k = Tensor<float>::from_view(raw_k.view().middle_rows(at, s));
      std::vector<std::int64_t> pos;
      for (Index i = 0; i < s; ++i) pos.push_back(at + i);
      apply_rope<float>(k.view(), 1, d, make_rope_table<float>(inv_freq, pos), RopePairing::rotate_half);
      layer.step(k.view(), values.view().middle_rows(at, s));
      at += s;
    }
    REQUIRE(layer.kept() == std::vector<Index>{0, 1, 36, 37, 38, 39});
    // The decoder's next step: token 40's key is cached at its absolute position, its query too.
    Tensor<float> k40 = Tensor<float>::from_view(raw_k.view().middle_rows(n, 1));
    const std::vector<std::int64_t> p40 = {n};
    apply_rope<float>(k40.view(), 1, d, make_rope_table<float>(inv_freq, p40), RopePairing::rotate_half);
    layer.cache.append(k40.view(), values.view().middle_rows(n, 1), p40);
    Tensor<float> q = Tensor<float>::from_view(raw_q.view());
    apply_rope<float>(q.view(), heads, d, make_rope_table<float>(inv_freq, p40), RopePairing::rotate_half);
    Tensor<float> got({1, heads * d});
    const std::vector<ConstView<float>> ks = {layer.cache.head(0).keys()}, vs = {layer.cache.head(0).values()};
    AttentionInput<float> in;
    in.q = q.view(), in.k = ks, in.v = vs, in.out = got.view(), in.n_heads = heads, in.head_dim = d;
    attention<float>(in);
    // Reference: the cached tokens (0, 1, 36..40) at positions 0..6, the query at 6.
    const std::vector<Index> order = {0, 1, 36, 37, 38, 39, 40};
    Tensor<float> kc({7, d}), vc({7, d});
    for (Index i = 0; i < 7; ++i)
      std::copy_n(raw_k.row(order[std::size_t(i)]), d, kc.row(i)), std::copy_n(values.row(order[std::size_t(i)]), d, vc.row(i));
    const auto want = attend(inv_freq, raw_q.view(), 6, kc.view(), {0, 1, 2, 3, 4, 5, 6}, vc.view(), heads);
    CHECK(test::relative_error<float>(got.view(), want.view()) <= 1e-5);
    // Without the re-indexing (keys at their absolute positions) the output is visibly different.
    const auto absolute = attend(inv_freq, raw_q.view(), 40, kc.view(), {0, 1, 36, 37, 38, 39, 40}, vc.view(), heads);
    CHECK(test::relative_error<float>(absolute.view(), want.view()) > 1e-3);
  }
}

namespace {
// KV heads of width 8, one query head each (the same data in every head): tokens 0..8, the last
// two (7, 8) are the window. The window's queries give logit a to tokens 1 and 3 (keys e0, e1)
// and a + ln 1.17 to token 6 (key e2); every other key is zero.
void snap_prompt(PolicyLayer& layer) {
  constexpr Index d = 8;
  const Index heads = layer.cache.n_heads();
  const double a = 10.0;
  Tensor<float> k({9, heads * d}), v({9, heads * d}), q({9, heads * d});
  for (Index h = 0; h < heads; ++h) {
    k(1, h * d + 0) = 1.f, k(3, h * d + 1) = 1.f, k(6, h * d + 2) = 1.f;
    for (Index r = 7; r < 9; ++r)
      q(r, h * d + 0) = float(a * std::sqrt(8.0)), q(r, h * d + 1) = float(a * std::sqrt(8.0)),
                q(r, h * d + 2) = float((a + std::log(1.17)) * std::sqrt(8.0));
  }
  layer.step(k.view().middle_rows(0, 5), v.view().middle_rows(0, 5), nullptr, q.view().middle_rows(0, 5));  // two chunks
  layer.step(k.view().middle_rows(5, 4), v.view().middle_rows(5, 4), nullptr, q.view().middle_rows(5, 4));
}
}  // namespace

TEST_CASE("SnapKV compresses once, after the prompt, from the observation window, with pooling", "[policies][snapkv]") {
  {  // no pooling: the most attended earlier token (6) and the window
    const SnapKVPolicy<float> p(Budget::of_tokens(3), 2, 1);
    CHECK_FALSE(p.needs_attention());  // no probabilities are streamed while reading
    PolicyLayer layer(p, 1, 8);
    snap_prompt(layer);
    CHECK(layer.cache.head(0).size() == 9);  // nothing happens before the end of the prompt
    layer.end_prompt();
    CHECK(layer.kept() == std::vector<Index>{6, 7, 8});
  }
  {  // pooling (kernel 3): token 2, never attended, sits between two attended tokens and wins
    const SnapKVPolicy<float> p(Budget::of_tokens(3), 2, 3);
    PolicyLayer layer(p, 1, 8);
    snap_prompt(layer);
    layer.end_prompt();
    CHECK(layer.kept() == std::vector<Index>{2, 7, 8});
    // Tokens read after the prompt are appended; nothing is compressed until the next end_prompt.
    const auto [k, v] = tokens(3, 1, 8, 31);
    const auto q = test::random_tensor<float>({3, 8}, 32);
    layer.step(k.view(), v.view(), nullptr, q.view());
    CHECK(layer.kept() == std::vector<Index>{2, 7, 8, 9, 10, 11});
    layer.end_prompt();  // a second prompt: the window is now tokens 10, 11
    CHECK(layer.cache.head(0).size() == 3);
    CHECK(layer.kept().back() == 11);
  }
  {  // never more than the budget: a window larger than the budget keeps its last `budget` tokens
    const SnapKVPolicy<float> p(Budget::of_tokens(2), 4, 1);
    PolicyLayer layer(p, 2, 8);
    snap_prompt(layer);
    layer.end_prompt();
    CHECK(layer.kept(0) == std::vector<Index>{7, 8});
    CHECK(layer.kept(1) == std::vector<Index>{7, 8});
  }
  {  // a prompt within the budget is left alone
    const SnapKVPolicy<float> p(Budget::of_tokens(9), 2, 1);
    PolicyLayer layer(p, 1, 8);
    snap_prompt(layer);
    layer.end_prompt();
    CHECK(layer.cache.head(0).size() == 9);
  }
}

TEST_CASE("SnapKV matches a slow reference of its rule on random data with GQA", "[policies][snapkv]") {
  constexpr Index d = 8, heads = 4, kv = 2, n = 50, window = 6, pool = 5, budget = 20;
  const auto keys = test::random_tensor<float>({n, kv * d}, 41), values = test::random_tensor<float>({n, kv * d}, 42);
  const auto q = test::random_tensor<float>({n, heads * d}, 43, 2.0);
  const SnapKVPolicy<float> p(Budget::of_tokens(budget), window, pool);
  PolicyLayer layer(p, kv, d);
  for (Index at = 0; at < n; at += 10)
    layer.step(keys.view().middle_rows(at, 10), values.view().middle_rows(at, 10), nullptr, q.view().middle_rows(at, 10));
  layer.end_prompt();
  for (Index h = 0; h < kv; ++h) {
    // Reference: softmax of each window query (causal) over all keys, summed over the window and
    // averaged over the 2 query heads of the group, pooled over the prefix, top budget - window.
    std::vector<double> score(n - window, 0.0);
    for (Index g = 0; g < 2; ++g)
      for (Index r = n - window; r < n; ++r) {
        std::vector<double> logit(std::size_t(r + 1));
        double m = -1e300, z = 0;
        for (Index j = 0; j <= r; ++j) {
          double s = 0;
          for (Index c = 0; c < d; ++c) s += double(q(r, (h * 2 + g) * d + c)) * keys(j, h * d + c);
          logit[std::size_t(j)] = s / std::sqrt(double(d)), m = std::max(m, logit[std::size_t(j)]);
        }
        for (double& x : logit) z += (x = std::exp(x - m));
        for (Index j = 0; j < n - window; ++j) score[std::size_t(j)] += logit[std::size_t(j)] / z / 2.0;
      }
    std::vector<double> pooled(n - window, 0.0);
    for (Index i = 0; i < n - window; ++i)
      for (Index j = i - pool / 2; j <= i + pool / 2; ++j)
        if (j >= 0 && j < n - window) pooled[std::size_t(i)] += score[std::size_t(j)] / pool;
    std::vector<Index> order(n - window);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return pooled[std::size_t(a)] > pooled[std::size_t(b)]; });
    std::vector<Index> expected(order.begin(), order.begin() + (budget - window));
    for (Index i = n - window; i < n; ++i) expected.push_back(i);
    std::sort(expected.begin(), expected.end());
    INFO("KV head " << h);
    CHECK(layer.kept(h) == expected);
  }
}

TEST_CASE("TOVA drops what the last query attends to least and keeps heads identical", "[policies][tova]") {
  const TovaPolicy<float> p(Budget::of_tokens(3));
  PolicyLayer layer(p, 2, 4);
  const auto [k, v] = tokens(5, 2, 4, 51);
  // Only the last query counts: it attends to tokens 0, 3, 4.
  const auto probs = rows_of({{.9f, .1f, 0.f, 0.f, 0.f}, {.5f, .05f, .05f, .2f, .2f}});
  layer.step(k.view(), v.view(), &probs);
  CHECK(layer.kept(0) == std::vector<Index>{0, 3, 4});
  CHECK(layer.kept(1) == std::vector<Index>{0, 3, 4});
  for (Index i = 0; i < 3; ++i) CHECK(layer.cache.head(0).position(i) == layer.cache.head(1).position(i));
}

TEST_CASE("Recency keeps the last tokens and ratio budgets follow the tokens seen", "[policies][recency]") {
  const RecencyPolicy<float> p(Budget::of_ratio(0.25));
  PolicyLayer layer(p, 1, 4);
  const auto [k, v] = tokens(12, 1, 4, 61);
  layer.step(k.view(), v.view());
  CHECK(layer.kept() == std::vector<Index>{9, 10, 11});
  for (Index t = 0; t < 4; ++t) {
    const auto [k1, v1] = tokens(1, 1, 4, 70 + std::uint64_t(t));
    layer.step(k1.view(), v1.view());
  }
  CHECK(layer.kept() == std::vector<Index>{12, 13, 14, 15});  // ceil(0.25 * 16)
}

namespace {
// Rotation matrix of RoPE (rotate_half pairing) at position p, dense [d, d]: x' = R x.
test::Mat rope_matrix(const std::vector<double>& inv_freq, double p) {
  const Index d = 2 * Index(inv_freq.size()), h = d / 2;
  test::Mat r(d, d);
  for (Index i = 0; i < h; ++i) {
    const double c = std::cos(p * inv_freq[std::size_t(i)]), s = std::sin(p * inv_freq[std::size_t(i)]);
    r(i, i) = c, r(i, i + h) = -s, r(i + h, i) = s, r(i + h, i + h) = c;
  }
  return r;
}
}  // namespace

TEST_CASE("ExpectedAttention matches a slow reference of its rule (statistics, averaged rotation, scores)", "[policies][expected_attention]") {
  constexpr Index d = 8, heads = 4, kv = 2, group = 2, n = 60, budget = 25;
  const auto inv_freq = rope_inv_freq(d, 10000.0);
  const auto keys = test::random_tensor<float>({n, kv * d}, 81), values = test::random_tensor<float>({n, kv * d}, 82);
  auto raw_q = test::random_tensor<float>({n, heads * d}, 83);
  for (Index r = 0; r < n; ++r)  // queries with a mean and correlations, so both terms matter
    for (Index c = 0; c < heads * d; ++c) raw_q(r, c) = raw_q(r, c) * (1.f + 0.1f * float(c % 5)) + 0.5f * float(c % 3) + 0.3f * raw_q(r, (c + 1) % (heads * d));
  ExpectedAttentionOptions o;
  o.n_future_positions = 64;
  const ExpectedAttentionPolicy<float> p(Budget::of_tokens(budget), o);
  PolicyLayer layer(p, kv, d);
  layer.cache.rotation = KeyRotation{inv_freq, RopePairing::rotate_half};
  const std::vector<Index> cuts = {0, 3, 17, 40, n};  // uneven steps: the statistics are merged
  for (std::size_t s = 0; s + 1 < cuts.size(); ++s) {
    const Index at = cuts[s], len = cuts[s + 1] - cuts[s];
    layer.step(keys.view().middle_rows(at, len), values.view().middle_rows(at, len), nullptr, raw_q.view().middle_rows(at, len));
  }
  for (Index h = 0; h < kv; ++h) REQUIRE(layer.cache.head(h).size() == n);  // nothing before the end of the prompt
  // Reference: R_bar = mean of R(p) over p = 60 .. 123 (dense matrices from the definition); mean and
  // population covariance of the raw queries of tokens 4 .. 59; z, softmax over non-sinks, group
  // mean, times |v|; keep the 4 sinks and the best budget - 4.
  test::Mat rbar(d, d);
  for (Index q_pos = n; q_pos < n + o.n_future_positions; ++q_pos) {
    const auto r = rope_matrix(inv_freq, double(q_pos));
    for (std::size_t i = 0; i < r.v.size(); ++i) rbar.v[i] += r.v[i] / double(o.n_future_positions);
  }
  const auto& stats = static_cast<const policies::detail::ExpectedAttentionState*>(layer.state.get())->layers[0];
  CHECK(stats.count == double(n - o.n_sink));
  std::vector<std::vector<Index>> expected(kv);
  for (Index h = 0; h < kv; ++h) {
    std::vector<double> score(n, 0.0);
    for (Index g = 0; g < group; ++g) {
      const Index qh = h * group + g;
      std::vector<double> mu(d, 0.0), mu2(d, 0.0);
      test::Mat cov(d, d), rc(d, d), cov2(d, d);
      for (Index r = o.n_sink; r < n; ++r)
        for (Index c = 0; c < d; ++c) mu[std::size_t(c)] += raw_q(r, qh * d + c) / double(n - o.n_sink);
      for (Index r = o.n_sink; r < n; ++r)
        for (Index a = 0; a < d; ++a)
          for (Index b = 0; b < d; ++b)
            cov(a, b) += (raw_q(r, qh * d + a) - mu[std::size_t(a)]) * (raw_q(r, qh * d + b) - mu[std::size_t(b)]) / double(n - o.n_sink);
      for (Index a = 0; a < d; ++a)
        for (Index b = 0; b < d; ++b) mu2[std::size_t(a)] += rbar(a, b) * mu[std::size_t(b)];
      for (Index a = 0; a < d; ++a)
        for (Index b = 0; b < d; ++b)
          for (Index c = 0; c < d; ++c) rc(a, b) += rbar(a, c) * cov(c, b);
      for (Index a = 0; a < d; ++a)
        for (Index b = 0; b < d; ++b)
          for (Index c = 0; c < d; ++c) cov2(a, b) += rc(a, c) * rbar(b, c);
      std::vector<double> z(n);
      double m = -1e300, total = 0;
      for (Index i = o.n_sink; i < n; ++i) {
        double lin = 0, quad = 0;
        for (Index a = 0; a < d; ++a) {
          lin += mu2[std::size_t(a)] * keys(i, h * d + a);
          for (Index b = 0; b < d; ++b) quad += keys(i, h * d + a) * cov2(a, b) * keys(i, h * d + b);
        }
        z[std::size_t(i)] = lin / std::sqrt(double(d)) + quad / (2.0 * d), m = std::max(m, z[std::size_t(i)]);
      }
      for (Index i = o.n_sink; i < n; ++i) total += std::exp(z[std::size_t(i)] - m);
      for (Index i = o.n_sink; i < n; ++i) score[std::size_t(i)] += std::exp(z[std::size_t(i)] - m) / total / group;
    }
    for (Index i = o.n_sink; i < n; ++i) {
      double vn = 0;
      for (Index c = 0; c < d; ++c) vn += double(values(i, h * d + c)) * values(i, h * d + c);
      score[std::size_t(i)] *= std::sqrt(vn);
    }
    // The policy's statistics and scores agree with the reference.
    const auto [mean, cov] = p.rotated_statistics(stats, layer.cache.rotation, h, group, n);
    std::vector<bool> sink(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) sink[std::size_t(i)] = i < o.n_sink;
    const auto got = expected_attention_scores<float>(layer.cache.head(h).keys(), layer.cache.head(h).values(), mean, cov, group, sink, o);
    double err = 0, scale = 0;
    for (Index i = o.n_sink; i < n; ++i)
      err = std::max(err, std::abs(got[std::size_t(i)] - score[std::size_t(i)])), scale = std::max(scale, score[std::size_t(i)]);
    INFO("KV head " << h);
    CHECK(err <= 1e-5 * scale);
    for (Index i = 0; i < o.n_sink; ++i) CHECK(std::isinf(got[std::size_t(i)]));
    std::vector<Index> order;
    for (Index i = o.n_sink; i < n; ++i) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](Index a, Index b) { return score[std::size_t(a)] > score[std::size_t(b)]; });
    expected[std::size_t(h)].assign(order.begin(), order.begin() + (budget - o.n_sink));
    for (Index i = 0; i < o.n_sink; ++i) expected[std::size_t(h)].push_back(i);
    std::sort(expected[std::size_t(h)].begin(), expected[std::size_t(h)].end());
  }
  layer.end_prompt();
  for (Index h = 0; h < kv; ++h) {
    INFO("KV head " << h);
    CHECK(layer.kept(h) == expected[std::size_t(h)]);
  }
}

TEST_CASE("bad budgets, options and policy names are Errors", "[policies][errors]") {
  CHECK_THROWS_AS(Budget::of_tokens(0), Error);
  CHECK_THROWS_AS(Budget::of_tokens(-3), Error);
  CHECK_THROWS_AS(Budget::of_ratio(0.0), Error);
  CHECK_THROWS_AS(Budget::of_ratio(-0.1), Error);
  CHECK_THROWS_AS(Budget::of_ratio(1.5), Error);
  for (const char* text : {"0", "-4", "1.5", "0.0", "abc", "12x", "-0.5"}) {
    INFO(text);
    CHECK_THROWS_AS(parse_budget(text), Error);
  }
  CHECK(parse_budget("2048").tokens == 2048);
  CHECK(parse_budget("0.25").ratio == 0.25);
  CHECK_FALSE(parse_budget("none").limited());
  CHECK(Budget::of_ratio(0.25).allowed(100) == 25);
  CHECK_THROWS_AS(RecencyPolicy<float>(Budget::none()), Error);
  CHECK_THROWS_AS(H2OPolicy<float>(Budget::of_tokens(8), 1.5), Error);
  CHECK_THROWS_AS(StreamingPolicy<float>(Budget::of_tokens(4), 4), Error);  // no room for a window
  CHECK_THROWS_AS(StreamingPolicy<float>(Budget::of_tokens(8), -1), Error);
  CHECK_THROWS_AS(SnapKVPolicy<float>(Budget::of_tokens(8), 0), Error);
  CHECK_THROWS_AS(SnapKVPolicy<float>(Budget::of_tokens(8), 4, 2), Error);
  ExpectedAttentionOptions o;
  o.n_future_positions = 0;
  CHECK_THROWS_AS(ExpectedAttentionPolicy<float>(Budget::of_tokens(8), o), Error);
  CHECK_THROWS_AS(make_policy<float>("lru", Budget::of_tokens(8)), Error);
  CHECK_THROWS_AS(make_policy<float>("h2o", Budget::none()), Error);
  CHECK(make_policy<float>("none", Budget::none()) == nullptr);
  for (std::string_view name : kPolicyNames) {
    if (name == "none") continue;
    const auto p = make_policy<float>(name, Budget::of_tokens(16));
    REQUIRE(p != nullptr);
    CHECK(p->name() == name);
  }
  // A policy the factory does not know, injected by the caller (how NAMM is offered by name).
  const std::vector<NamedPolicy<float>> extra = {{"mine", [](Budget b) { return std::make_unique<RecencyPolicy<float>>(b); }}};
  CHECK(make_policy<float>("mine", Budget::of_tokens(3), extra)->name() == "recency");
  try {
    (void)make_policy<float>("nam", Budget::of_tokens(3), extra);
    FAIL("expected an Error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("mine") != std::string::npos);  // the message lists the known names
  }
}
