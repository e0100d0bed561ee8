// Fused attention against a materialised double reference: causal, offsets, GQA, every mask kind,
// both kernel strategies (row dots for few queries, transposed-K tiles for many), and the sink.
#include <map>
#include <mutex>

#include "core/attention_reference.hpp"

using namespace engram;
using namespace engram::test::attention_ref;

namespace {

template <class T>
double forward_tolerance(const Case& c) {
  // Score error ~ d eps |q||k| scale (random normals: |q.k| ~ sqrt(d) * 4 sigma) turns into a relative
  // error of the probabilities; the output is a convex combination of |v| <= ~5.
  return 32 * test::eps<T>() * (4.0 * std::sqrt(double(c.d)) + std::log2(double(c.tk[0]) + 2) + 8) * 5.0;
}

// Records every tile; checks the delivery contract: per KV head, blocks of at most kSinkRows rows in
// increasing order, aligned to the phase, tiles in increasing key order, then rows_done.
template <class T>
class RecordingSink : public ProbabilitySink<T> {
 public:
  RecordingSink(const Case& c, Index phase) : c_(c), phase_(phase) {
    for (Index h = 0; h < c.n_kv; ++h) probs.emplace_back(c.tq, c.tk[std::size_t(h)], 0.0), next.push_back(0), next_key.push_back(0);
  }
  void consume(Index kv_head, Index q_begin, Index k_begin, ConstView<T> tile) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t h = std::size_t(kv_head);
    CHECK(q_begin == next[h]);
    CHECK(tile.rows() <= kSinkRows);
    CHECK((phase_ + q_begin) / kSinkRows == (phase_ + q_begin + tile.rows() - 1) / kSinkRows);  // one block
    CHECK(k_begin >= next_key[h]);
    CHECK(k_begin + tile.cols() <= c_.tk[h]);
    next_key[h] = k_begin + tile.cols();
    for (Index r = 0; r < tile.rows(); ++r)
      for (Index j = 0; j < tile.cols(); ++j) probs[h](q_begin + r, k_begin + j) = double(tile(r, j));
  }
  void rows_done(Index kv_head, Index q_begin, Index n_rows) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t h = std::size_t(kv_head);
    CHECK(q_begin == next[h]);
    next[h] = q_begin + n_rows;
    next_key[h] = 0;
  }
  std::vector<test::Mat> probs;
  std::vector<Index> next, next_key;

 private:
  Case c_;
  Index phase_;
  std::mutex mutex_;
};

template <class T>
void run_case(const Case& c, std::uint64_t seed, bool with_sink, Index strip_limit = AttentionInput<T>{}.sink_strip_limit) {
  auto p = make_problem<T>(c, seed);
  auto in = p.forward_input();
  in.n_heads = c.n_heads;
  in.head_dim = c.d;
  in.mask = c.mask;
  in.offset = c.offset;
  if (c.mask == MaskKind::custom) in.custom_mask = p.mask.view();
  const Index phase = Index(seed % kSinkRows);  // exercise unaligned starts too
  RecordingSink<T> sink(c, phase);
  if (with_sink) in.sink = &sink, in.sink_phase = phase, in.sink_strip_limit = strip_limit;
  const auto ref = reference(p, false);
  attention<T>(in);
  INFO("tq=" << c.tq << " heads=" << c.n_heads << "/" << c.n_kv << " d=" << c.d << " tk0=" << c.tk[0]
       << " mask=" << int(c.mask) << " offset=" << c.offset << " sink=" << with_sink);
  test::require_close<T>(p.out.view(), ref.out, forward_tolerance<T>(c), "attention output");
  if (with_sink) {
    const Index group = c.n_heads / c.n_kv;
    for (Index kv = 0; kv < c.n_kv; ++kv) {
      CHECK(sink.next[std::size_t(kv)] == c.tq);
      test::Mat avg(c.tq, c.tk[std::size_t(kv)]);
      for (Index g = 0; g < group; ++g)
        for (std::size_t e = 0; e < avg.v.size(); ++e) avg.v[e] += ref.probs[std::size_t(kv * group + g)].v[e] / double(group);
      double worst = 0;
      for (std::size_t e = 0; e < avg.v.size(); ++e) worst = std::max(worst, std::abs(avg.v[e] - sink.probs[std::size_t(kv)].v[e]));
      CHECK(worst <= forward_tolerance<T>(c));
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  for (Index t : {1, 5, 16, 17, 64, 130})  // prefill from an empty cache, both strategies
    for (Index d : {8, 24, 64}) cs.push_back({t, 4, 2, d, {t, t}});
  cs.push_back({7, 4, 2, 16, {50, 50}});              // chunked prefill: queries at the end
  cs.push_back({1, 8, 1, 64, {300}});                 // decode with MQA
  cs.push_back({40, 8, 2, 32, {40, 40}});             // GQA, several sink tiles
  cs.push_back({3, 4, 2, 16, {20, 9}});               // KV heads of different lengths (after eviction)
  cs.push_back({33, 4, 2, 16, {70, 45}});
  cs.push_back({20, 2, 2, 16, {33, 33}, MaskKind::none});
  cs.push_back({40, 2, 1, 32, {40}, MaskKind::reverse_causal});
  cs.push_back({6, 2, 1, 16, {6}, MaskKind::reverse_causal});
  cs.push_back({24, 2, 2, 16, {31, 31}, MaskKind::custom});
  cs.push_back({9, 2, 1, 16, {12}, MaskKind::custom});
  cs.push_back({10, 2, 1, 16, {30}, MaskKind::causal, 5});  // explicit offset: later keys invisible
  return cs;
}

}  // namespace

TEMPLATE_TEST_CASE("fused attention equals the materialised reference", "[attention]", float, double) {
  std::uint64_t seed = 1;
  for (const Case& c : cases()) run_case<TestType>(c, seed++, false);
}

TEMPLATE_TEST_CASE("the probability sink receives the exact group-averaged softmax", "[attention][sink]", float, double) {
  std::uint64_t seed = 100;
  for (const Case& c : cases()) run_case<TestType>(c, seed++, true);
}

TEMPLATE_TEST_CASE("the sink without a probability strip (over its memory limit) recomputes the same probabilities",
                   "[attention][sink]", float, double) {
  std::uint64_t seed = 100;
  for (const Case& c : cases()) run_case<TestType>(c, seed++, true, /*strip_limit=*/0);
}

TEST_CASE("sink_score_passes: one pass with a probability strip, two past its limit", "[attention][sink]") {
  Tensor<float> q({20, 4 * 16}), k({100, 16}), v({100, 16}), out({20, 4 * 16});
  const std::vector<ConstView<float>> ks = {k.view(), k.view()}, vs = {v.view(), v.view()};
  RecordingSink<float> sink(Case{20, 4, 2, 16, {100, 100}}, 0);
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = 4, in.head_dim = 16;
  CHECK(sink_score_passes(in) == 1);  // no sink
  in.sink = &sink;
  CHECK(sink_score_passes(in) == 1);
  // The strip: 2 heads per group x 16 queries x 128 keys (100 rounded up to whole key blocks of 32
  // or 64), in floats.
  in.sink_strip_limit = Index(sizeof(float)) * 2 * 16 * 128;
  CHECK(sink_score_passes(in) == 1);
  in.sink_strip_limit -= 1;
  CHECK(sink_score_passes(in) == 2);
  in.sink_strip_limit = 0;
  CHECK(sink_score_passes(in) == 2);
  in.sink_strip_limit = -1;
  CHECK_THROWS_AS(attention<float>(in), Error);
}

TEST_CASE("attention on strided views and in place", "[attention]") {
  const Index tq = 20, heads = 2, d = 8;
  auto qkv = test::random_tensor<float>({tq, 3 * heads * d}, 5);  // [q | k | v] packed, as a fused projection
  Tensor<float> out({tq, heads * d});
  std::vector<ConstView<float>> ks, vs;
  for (Index h = 0; h < heads; ++h) {
    ks.push_back(qkv.view().middle_cols(heads * d + h * d, d));
    vs.push_back(qkv.view().middle_cols(2 * heads * d + h * d, d));
  }
  AttentionInput<float> in;
  in.q = qkv.view().middle_cols(0, heads * d);
  in.k = ks;
  in.v = vs;
  in.out = out.view();
  in.n_heads = heads;
  in.head_dim = d;
  attention<float>(in);
  // Same computation in place on a copy of q.
  Tensor<float> q = Tensor<float>::from_view(in.q);
  in.q = q.view();
  in.out = q.view();
  attention<float>(in);
  for (Index i = 0; i < tq; ++i)
    for (Index c = 0; c < heads * d; ++c) CHECK(q(i, c) == out(i, c));
}

TEST_CASE("attention: a row that sees no key yields zeros", "[attention]") {
  Case c{3, 2, 1, 16, {5}, MaskKind::custom};
  auto p = make_problem<float>(c, 77);
  auto in = p.forward_input();
  in.n_heads = 2;
  in.head_dim = 16;
  in.mask = MaskKind::custom;
  in.custom_mask = p.mask.view();
  attention<float>(in);
  for (Index e = 0; e < 32; ++e) CHECK(p.out(1, e) == 0.f);
}

TEST_CASE("attention rejects bad shapes", "[attention][errors]") {
  Case c{4, 4, 2, 8, {4, 4}};
  auto p = make_problem<float>(c, 3);
  auto in = p.forward_input();
  in.lse = View<float>();  // each check below is about one other field
  in.n_heads = 3;  // not a multiple of 2 KV heads
  in.head_dim = 8;
  CHECK_THROWS_AS(attention<float>(in), Error);
  in.n_heads = 4;
  in.head_dim = 7;
  CHECK_THROWS_AS(attention<float>(in), Error);
  in.head_dim = 8;
  Tensor<float> short_v({3, 8});
  std::vector<ConstView<float>> vs = {short_v.view(), p.v[1].view()};
  in.v = vs;
  CHECK_THROWS_AS(attention<float>(in), Error);
  in.v = p.kv_v;
  Tensor<float> q_long({6, 32}), out_long({6, 32});
  in.q = q_long.view();
  in.out = out_long.view();
  CHECK_THROWS_AS(attention<float>(in), Error);  // 6 causal queries, 4 keys
  in.mask = MaskKind::custom;
  CHECK_THROWS_AS(attention<float>(in), Error);  // no mask given
  in.q = p.q.view();
  in.out = p.out.view();
  in.mask = MaskKind::causal;
  CHECK_NOTHROW(attention<float>(in));
}

TEST_CASE("visible_pairs counts the FLOP-relevant pairs", "[attention][flops]") {
  Case c{5, 2, 1, 8, {12}};
  auto p = make_problem<float>(c, 1);
  auto in = p.forward_input();
  in.n_heads = 2;
  in.head_dim = 8;
  CHECK(visible_pairs(in, 0) == flops::causal_pairs(5, 12));
  CHECK(flops::causal_pairs(5, 12) == 5 * 7 + 15);
  in.mask = MaskKind::none;
  CHECK(visible_pairs(in, 0) == 60);
}

TEST_CASE("attention: an offset past the keys is an Error", "[attention][errors]") {
  Tensor<float> q({2, 8}), k({4, 8}), v({4, 8}), out({2, 8});
  std::vector<ConstView<float>> ks{k.view()}, vs{v.view()};
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = 1, in.head_dim = 8;
  in.offset = 4;  // query 0 at index 4: just past the last key, still well defined
  attention<float>(in);
  in.offset = 5;
  REQUIRE_THROWS_WITH(attention<float>(in), Catch::Contains("offset 5 is past the 4 keys"));
  in.mask = MaskKind::reverse_causal;
  REQUIRE_THROWS_WITH(attention<float>(in), Catch::Contains("past the 4 keys"));
}

namespace {
// Attention of problem p with its keys and values stored as 16-bit `format`, against the float
// kernel on the same values widened back (exact): outputs, log-sum-exp and sink probabilities must
// be identical bit for bit, on the row path (few queries: widened per key block) and the tiled path.
void check_half_storage(const Case& c, std::uint64_t seed, WeightFormat format, bool with_sink, Index strip_limit) {
  auto p = make_problem<float>(c, seed);
  std::vector<Tensor<std::uint16_t>> k16, v16;
  std::vector<Tensor<float>> kr, vr;
  std::vector<ConstView<std::uint16_t>> k16v, v16v;
  std::vector<ConstView<float>> krv, vrv;
  for (Index h = 0; h < c.n_kv; ++h) {
    for (auto [src, bits, back] : {std::tuple{&p.k[std::size_t(h)], &k16, &kr}, std::tuple{&p.v[std::size_t(h)], &v16, &vr}}) {
      bits->emplace_back(Shape{src->rows(), c.d});
      back->emplace_back(Shape{src->rows(), c.d});
      for (Index i = 0; i < src->rows(); ++i) narrow_row(src->row(i), c.d, format, bits->back().row(i));
      if (src->rows() > 0) widen_rows(bits->back().view(), format, 0, src->rows(), back->back().data(), back->back().stride());
    }
  }
  for (Index h = 0; h < c.n_kv; ++h)
    k16v.push_back(k16[std::size_t(h)].view()), v16v.push_back(v16[std::size_t(h)].view()), krv.push_back(kr[std::size_t(h)].view()),
        vrv.push_back(vr[std::size_t(h)].view());
  const Index phase = Index(seed % kSinkRows);
  RecordingSink<float> sink_ref(c, phase), sink_half(c, phase);
  auto run = [&](bool half, RecordingSink<float>& sink) {
    auto in = p.forward_input();
    if (half) in.k = {}, in.v = {}, in.k16 = k16v, in.v16 = v16v, in.kv_format = format;
    else in.k = krv, in.v = vrv;
    if (with_sink) in.sink = &sink, in.sink_phase = phase, in.sink_strip_limit = strip_limit;
    attention<float>(in);
    return std::pair{p.out.copy(), p.lse.copy()};
  };
  const auto [out_ref, lse_ref] = run(false, sink_ref);
  const auto [out_half, lse_half] = run(true, sink_half);
  INFO("tq=" << c.tq << " heads=" << c.n_heads << "/" << c.n_kv << " d=" << c.d << " tk0=" << c.tk[0] << " mask=" << int(c.mask)
             << " window=" << c.window << " " << format_name(format) << " sink=" << with_sink << " strip=" << strip_limit);
  CHECK(test::same_bits<float>(out_ref.view(), out_half.view()));
  CHECK(test::same_bits<float>(lse_ref.view(), lse_half.view()));
  for (Index h = 0; h < c.n_kv && with_sink; ++h) CHECK(sink_ref.probs[std::size_t(h)].v == sink_half.probs[std::size_t(h)].v);
}
}  // namespace

TEST_CASE("attention on f16/bf16 keys and values equals attention on their float values, bit for bit", "[attention][kv16]") {
  std::vector<Case> cs = cases();
  Case windowed{40, 4, 2, 16, {90, 90}};
  windowed.window = 24;
  cs.push_back(windowed);
  std::uint64_t seed = 300;
  for (WeightFormat f : {WeightFormat::f16, WeightFormat::bf16})
    for (const Case& c : cs) {
      check_half_storage(c, seed, f, false, 0);
      check_half_storage(c, seed, f, true, AttentionInput<float>{}.sink_strip_limit);
      check_half_storage(c, seed++, f, true, 0);  // the sink's recomputing path reads the keys again
    }
}

TEST_CASE("attention: 16-bit keys and values with a bad layout are Errors", "[attention][kv16][errors]") {
  Case c{3, 2, 1, 8, {6}};
  auto p = make_problem<float>(c, 7);
  Tensor<std::uint16_t> k16({6, 8}), v16({6, 8}), v_short({5, 8});
  const std::vector<ConstView<std::uint16_t>> ks{k16.view()}, vs{v16.view()}, vbad{v_short.view()};
  auto in = p.forward_input();
  in.k16 = ks, in.v16 = vs;  // with kv_format f32
  REQUIRE_THROWS_WITH(attention<float>(in), Catch::Contains("k16/v16 are set") && Catch::Contains("kv_format is f32"));
  in.kv_format = WeightFormat::f16;  // k and v still set as well
  REQUIRE_THROWS_WITH(attention<float>(in), Catch::Contains("k and v must be empty"));
  in.k = {}, in.v = {};
  CHECK_NOTHROW(attention<float>(in));
  in.kv_format = WeightFormat::q8;
  REQUIRE_THROWS_WITH(attention<float>(in), Catch::Contains("f32, f16 or bf16") && Catch::Contains("q8"));
  in.kv_format = WeightFormat::bf16, in.v16 = vbad;
  REQUIRE_THROWS_WITH(attention<float>(in), Catch::Contains("v[0]"));
  auto pd = make_problem<double>(c, 7);
  auto ind = pd.forward_input();
  ind.k = {}, ind.v = {}, ind.k16 = ks, ind.v16 = vs, ind.kv_format = WeightFormat::f16;
  REQUIRE_THROWS_WITH(attention<double>(ind), Catch::Contains("need a float model"));
}
