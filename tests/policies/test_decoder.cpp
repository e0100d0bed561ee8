// Policies inside a decoder: budgets hold and heads stay aligned; eviction with slot reuse gives
// the logits and kept sets of order-keeping compaction; kept sets do not depend on the prefill
// chunking (token-by-token included) for the policies whose rule allows it.
#include <map>
#include <set>

#include "engram/io/hf.hpp"
#include "engram/eval/policy_factory.hpp"
#include "test_util.hpp"

using namespace engram;
using namespace engram::policies;

namespace {
// The tiny Llama with its KV cache stored as `kv` (f32, or f16/bf16: the policies read keys back as floats).
const Decoder<float>& tiny(WeightFormat kv = WeightFormat::f32) {
  static const auto load = [](WeightFormat f) {
    auto m = hf::load_decoder<float>(test::fixture("llama_tiny"));
    m.set_kv_format(f);
    return m;
  };
  switch (kv) {  // each loaded on first use
    case WeightFormat::f16: { static const Decoder<float> m = load(kv); return m; }
    case WeightFormat::bf16: { static const Decoder<float> m = load(kv); return m; }
    default: { static const Decoder<float> m = load(WeightFormat::f32); return m; }
  }
}
// f16 stands for both 16-bit formats here (the same code path; their conversions are pinned in
// test_kv_cache and test_attention), which keeps the sanitizer suite's time down.
constexpr WeightFormat kKvFormats[] = {WeightFormat::f32, WeightFormat::f16};
std::vector<std::int32_t> text(int n, int a, int b) {
  std::vector<std::int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(std::int32_t((i * a + b) % 67));
  return t;
}
// Kept positions of every (layer, head), each sorted.
std::vector<std::vector<std::int64_t>> kept_sets(Decoder<float>::State& s) {
  std::vector<std::vector<std::int64_t>> out;
  for (LayerCache<float>* c : s.caches())
    for (Index h = 0; h < c->n_heads(); ++h) {
      auto p = c->head(h).positions();
      std::sort(p.begin(), p.end());
      out.push_back(std::move(p));
    }
  return out;
}
std::unique_ptr<CachePolicy<float>> by_name(const std::string& name, Index budget) {
  return make_policy<float>(name, Budget::of_tokens(budget));
}
const std::vector<std::string> kBaselines = {"h2o", "knorm", "streaming", "snapkv", "tova", "recency", "expected_attention", "keydiff"};
}  // namespace

TEST_CASE("policies inside a decoder: budgets hold, heads stay aligned, the newest token stays", "[policies][decoder]") {
  const auto tokens = text(64, 17, 3);
  for (WeightFormat kv : kKvFormats)
  for (const std::string& name : kBaselines) {
    const auto& m = tiny(kv);
    INFO(name << ", KV cache " << format_name(kv));
    const auto p = by_name(name, 16);
    auto s = m.make_state(p.get());
    m.prefill(std::span(tokens).subspan(0, 40), s, {.chunk = 16});
    const bool once = name == "snapkv" || name == "expected_attention";  // compress once, after the prompt
    for (LayerCache<float>* c : s.caches()) CHECK(c->max_size() == (once ? 40 : 16));
    s.end_prompt();
    for (LayerCache<float>* c : s.caches())
      for (Index h = 0; h < c->n_heads(); ++h) CHECK(c->head(h).size() == 16);
    for (int i = 40; i < 64; ++i) m.decode(tokens[std::size_t(i)], s);
    for (LayerCache<float>* c : s.caches())
      for (Index h = 0; h < c->n_heads(); ++h) {
        CHECK(c->head(h).size() == (once ? 16 + 24 : 16));  // answers are appended uncompressed by the once-policies
        const auto pos = c->head(h).positions();
        CHECK(*std::max_element(pos.begin(), pos.end()) == 63);
        CHECK(std::set<std::int64_t>(pos.begin(), pos.end()).size() == pos.size());
      }
    CHECK(s.position() == 64);
  }
}

TEST_CASE("eviction with slot reuse gives the logits and kept sets of order-keeping compaction", "[policies][decoder]") {
  // Slot reuse changes the row order of the cache, so attention sums in another order: the logits
  // agree to rounding, the kept tokens exactly.
  const auto tokens = text(56, 29, 5);
  for (WeightFormat kv : kKvFormats)
  for (const std::string& name : kBaselines) {
    const auto& m = tiny(kv);
    INFO(name << ", KV cache " << format_name(kv));
    const auto p = by_name(name, 12);
    auto reuse = m.make_state(p.get()), compact = m.make_state(p.get());
    for (LayerCache<float>* c : compact.caches()) c->set_slot_reuse(false);
    const auto a = m.prefill(std::span(tokens).subspan(0, 32), reuse, {.chunk = 8, .all_logits = true});
    const auto b = m.prefill(std::span(tokens).subspan(0, 32), compact, {.chunk = 8, .all_logits = true});
    // A 16-bit cache quantises the next layer's keys: a rounding-level difference of the sum order can
    // flip a key's last f16/bf16 bit, so the logits agree to the format's rounding there.
    const double tol = kv == WeightFormat::f32 ? 1e-5 : kv == WeightFormat::f16 ? 2e-3 : 2e-2;
    CHECK(test::relative_error<float>(a.view(), b.view()) <= tol);
    reuse.end_prompt(), compact.end_prompt();
    double worst = 0;
    bool out_of_order = false;
    for (int i = 32; i < 56; ++i) {
      const auto x = m.decode(tokens[std::size_t(i)], reuse), y = m.decode(tokens[std::size_t(i)], compact);
      worst = std::max(worst, test::relative_error<float>(x.view(), y.view()));
      const auto pos = reuse.caches()[0]->head(0).positions();
      out_of_order = out_of_order || !std::is_sorted(pos.begin(), pos.end());
    }
    CHECK(worst <= tol);
    CHECK(kept_sets(reuse) == kept_sets(compact));
    // The per-step policies' reused caches really were out of position order (else this test would
    // prove nothing); the once-policies' single eviction happens to keep the order here.
    if (name != "snapkv" && name != "expected_attention") CHECK(out_of_order);
  }
}

TEST_CASE("kept sets do not depend on the prefill chunking, token by token included", "[policies][decoder][chunking]") {
  // Recency and StreamingLLM select by position; SnapKV and ExpectedAttention act once on the whole
  // prompt (the cache before end_prompt is the full cache, whatever the chunking); KNorm's greedy
  // rule equals a global one on fixed keys, which the first layer's keys are (they depend only on
  // the tokens); NAMM evicts at multiples of n_up only, and the decoder cuts steps there.
  // H2O, TOVA and KeyDiff are defined step by step (accumulated attention of queries that saw
  // different caches, the last query's attention, the anchor at each eviction): chunking changes
  // what they keep, by their papers' rules, so they are not in this list.
  // 48 distinct tokens (the vocabulary has 67): a repeated token would tie with itself in KNorm.
  const auto& m = tiny();
  const auto tokens = text(48, 13, 7);
  namm::NammWeights<float> w;
  w.theta = Tensor<float>({namm::BamScorer<float>::kParams});
  std::mt19937 rng(11);
  std::normal_distribution<float> N(0.f, 0.5f);
  for (Index i = 0; i < w.theta.numel(); ++i) w.theta[i] = N(rng);
  w.theta[4171] = -10.5f;  // b_s: some scores negative
  w.stats.var.fill(1.0);
  w.config.n_up = 16;
  const std::vector<NamedPolicy<float>> extra = {{"namm", [&](Budget cap) { return w.make_policy(cap); }}};
  for (const std::string name : {"recency", "streaming", "snapkv", "expected_attention", "knorm", "namm"}) {
    INFO(name);
    const auto p = make_policy<float>(name, name == "namm" ? Budget::none() : Budget::of_tokens(20), extra);
    std::vector<std::vector<std::vector<std::int64_t>>> results;
    for (Index chunk : {Index(0), Index(16), Index(7), Index(1)}) {
      auto s = m.make_state(p.get());
      if (chunk == 1) {
        for (std::int32_t t : tokens) m.decode(t, s);
      } else {
        m.prefill(tokens, s, {.chunk = chunk});
      }
      s.end_prompt();
      auto kept = kept_sets(s);
      if (name == "knorm") kept.resize(std::size_t(s.caches()[0]->n_heads()));  // layer 0 only
      results.push_back(std::move(kept));
    }
    if (name == "namm") CHECK(results[0][0].size() < 48);  // it did evict
    for (std::size_t r = 1; r < results.size(); ++r) CHECK(results[r] == results[0]);
  }
}

TEST_CASE("end_prompt without a policy, or with a policy that does not compress once, changes nothing", "[policies][decoder]") {
  const auto& m = tiny();
  const auto tokens = text(40, 7, 1);
  auto plain = m.make_state();
  m.prefill(tokens, plain);
  plain.end_prompt();
  CHECK(plain.caches()[0]->head(0).size() == 40);
  const RecencyPolicy<float> recency(Budget::of_tokens(50));
  auto s = m.make_state(&recency);
  m.prefill(tokens, s);
  s.end_prompt();
  CHECK(s.caches()[0]->head(0).size() == 40);
}

TEST_CASE("policies by name, NAMM included, one floor up (eval::make_policy)", "[policies][factory]") {
  namm::NammWeights<float> w;
  w.theta = Tensor<float>({namm::BamScorer<float>::kParams});
  w.stats.var.fill(1.0);
  for (std::string_view name : eval::kPolicyNames) {
    INFO(name);
    const auto p = eval::make_policy<float>(name, Budget::of_tokens(16), &w);
    if (name == "none") {
      CHECK(p == nullptr);
      continue;
    }
    REQUIRE(p != nullptr);
    CHECK(p->name() == name);
  }
  CHECK(eval::make_policy<float>("namm", Budget::none(), &w) != nullptr);  // NAMM's budget is an optional cap
  CHECK_THROWS_AS(eval::make_policy<float>("namm", Budget::none()), Error);  // no weights
  CHECK_THROWS_AS(eval::make_policy<float>("snap", Budget::of_tokens(16), &w), Error);
  CHECK_THROWS_AS(eval::make_policy<float>("tova", Budget::none(), &w), Error);
}

TEST_CASE("a cache policy on a sliding-window model is an Error, not a wrong window", "[policies][decoder][errors]") {
  // The kernel counts the window in cache rows; evictions reorder rows (slot reuse) or close gaps
  // (gather), so the rows no longer are the last positions.
  auto c = tiny().config;
  c.sliding_window = 4;
  const auto m = Decoder<float>::create(c);
  const RecencyPolicy<float> p(Budget::of_tokens(8));
  auto s = m.make_state(&p);
  CHECK_THROWS_AS(m.prefill(text(12, 3, 1), s), Error);
  auto plain = m.make_state();
  CHECK_NOTHROW(m.prefill(text(12, 3, 1), plain));
}
