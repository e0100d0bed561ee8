// Decoder invariants: prefill(T) == T decode steps == chunked prefill; batched decode == each
// sequence alone; state copies fork a sequence;
// bad tokens and over-long sequences are Errors; sampling.
#include "engram/io/hf.hpp"
#include "engram/nn/sampling.hpp"
#include "engram/policies/h2o.hpp"
#include "engram/ttt/loader.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {
Tensor<float> decode_one_by_one(const Decoder<float>& m, const std::vector<std::int32_t>& tokens) {
  auto s = m.make_state();
  Tensor<float> out({Index(tokens.size()), m.config.vocab_size});
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const auto l = m.decode(tokens[i], s);
    std::copy_n(l.row(0), l.cols(), out.row(Index(i)));
  }
  return out;
}
Tensor<float> prefill_all(const Decoder<float>& m, const std::vector<std::int32_t>& tokens, Index chunk) {
  auto s = m.make_state();
  return m.prefill(tokens, s, {.chunk = chunk, .all_logits = true});
}
}  // namespace

TEST_CASE("prefill equals token-by-token decode and chunked prefill", "[decoder][invariant]") {
  for (const char* dir : {"llama_tiny", "gpt2_tiny", "llama_tiny_variant"}) {
    const auto m = hf::load_decoder<float>(test::fixture(dir));
    const Checkpoint golden = Checkpoint::open(test::fixture(std::string(dir) + "/golden.safetensors"));
    auto tokens = test::read_tokens(golden);
    while (tokens.size() < 40 && std::string(dir) != "gpt2_tiny") tokens.push_back(tokens[tokens.size() % 7]);
    const auto full = prefill_all(m, tokens, 0);
    const auto stepwise = decode_one_by_one(m, tokens);
    INFO(dir);
    CHECK(test::relative_error<float>(stepwise.view(), full.view()) <= 1e-5);
    for (Index chunk : {1, 7, 64}) {
      INFO("chunk " << chunk);
      CHECK(test::relative_error<float>(prefill_all(m, tokens, chunk).view(), full.view()) <= 1e-5);
    }
    // Last-token logits equal the last row of all_logits.
    auto s = m.make_state();
    const auto last = m.prefill(tokens, s);
    REQUIRE(last.rows() == 1);
    CHECK(test::relative_error<float>(last.view(), full.view().middle_rows(full.rows() - 1, 1)) <= 1e-6);
    CHECK(s.position() == Index(tokens.size()));
  }
}

TEST_CASE("a 16-bit KV cache: prefill equals decode, logits near the f32 cache's, half the bytes", "[decoder][invariant][kv16]") {
  for (const char* dir : {"llama_tiny", "gpt2_tiny"}) {
    const auto f32 = hf::load_decoder<float>(test::fixture(dir));
    std::vector<std::int32_t> tokens;
    for (int i = 0; i < 40; ++i) tokens.push_back(std::int32_t((i * 29 + 3) % f32.config.vocab_size));
    const auto exact = prefill_all(f32, tokens, 0);
    for (WeightFormat f : {WeightFormat::f16, WeightFormat::bf16}) {
      INFO(dir << " " << format_name(f));
      auto m = hf::load_decoder<float>(test::fixture(dir));
      m.set_kv_format(f);
      CHECK(m.kv_format() == f);
      const auto full = prefill_all(m, tokens, 0);
      // Rounding keys and values (unit roundoff 2^-11 for f16, 2^-8 for bf16) moves the logits by
      // about that much, relative; a cache that dropped or garbled rows would be far off.
      const double err = test::relative_error<float>(full.view(), exact.view());
      CHECK(err > 0.0);
      CHECK(err <= (f == WeightFormat::f16 ? 2e-3 : 2e-2));
      // Prefill, decode and chunked prefill store the same rounded keys, except where the float
      // kernels' last-bit differences (1e-7, which the f32 cache shows as its 1e-5 bound) cross a
      // rounding boundary of the 16-bit format; so they agree far within the rounding itself.
      const double a = test::relative_error<float>(decode_one_by_one(m, tokens).view(), full.view());
      const double b = test::relative_error<float>(prefill_all(m, tokens, 7).view(), full.view());
      UNSCOPED_INFO("f32-cache error " << err << ", decode " << a << ", chunked " << b);
      CHECK(a <= err / 4);
      CHECK(b <= err / 4);
      auto s16 = m.make_state(), s32 = f32.make_state();
      m.prefill(tokens, s16), f32.prefill(tokens, s32);
      for (std::size_t l = 0; l < s16.caches().size(); ++l) {
        const auto &t16 = s16.caches()[l]->head(0), &t32 = s32.caches()[l]->head(0);
        CHECK(s16.caches()[l]->format() == f);
        // Two bytes a value, rows padded to 64 bytes (gpt2_tiny's 16-value heads: as many bytes as f32).
        const std::size_t hd = std::size_t(m.config.head_dim);
        CHECK(t16.bytes_per_token() - t16.packed_row_bytes() == 2 * 2 * std::size_t(padded_cols<std::uint16_t>(Index(hd))));
        CHECK(t32.bytes_per_token() - t32.packed_row_bytes() == 2 * 4 * std::size_t(padded_cols<float>(Index(hd))));
      }
      CHECK(s16.copy().caches()[0]->format() == f);
    }
  }
  auto m = hf::load_decoder<float>(test::fixture("llama_tiny"));
  REQUIRE_THROWS_WITH(m.set_kv_format(WeightFormat::q8), Catch::Contains("f32, f16 or bf16, got q8"));
  auto md = hf::load_decoder<double>(test::fixture("llama_tiny"));
  REQUIRE_THROWS_WITH(md.set_kv_format(WeightFormat::f16), Catch::Contains("need a float model"));
}

TEST_CASE("state copies fork a sequence; reset empties it; bytes track the cache", "[decoder]") {
  const auto m = hf::load_decoder<float>(test::fixture("llama_tiny"));
  const std::vector<std::int32_t> prefix = {1, 5, 9, 13, 17}, a = {2, 3}, b = {40, 41};
  auto s = m.make_state();
  const std::size_t empty_bytes = s.bytes();
  m.prefill(prefix, s);
  CHECK(s.bytes() > empty_bytes);
  auto fork = s.copy();
  const auto la = m.prefill(a, s);
  const auto lb = m.prefill(b, fork);
  auto direct_b = m.make_state();
  std::vector<std::int32_t> pb = prefix;
  pb.insert(pb.end(), b.begin(), b.end());
  const auto ref_b = m.prefill(pb, direct_b);
  CHECK(test::relative_error<float>(lb.view(), ref_b.view()) <= 1e-6);
  CHECK(test::relative_error<float>(la.view(), ref_b.view()) > 1e-3);  // the two branches differ
  CHECK(s.flops.total() > 0);
  s.reset();
  CHECK(s.position() == 0);
  CHECK(s.bytes() == empty_bytes);
  // Per-token KV bytes: 2 layers x 2 KV heads x (K + V padded to 16 floats + position).
  auto t = m.make_state();
  m.prefill(std::vector<std::int32_t>(100, 3), t);
  CHECK(t.caches().size() == 2);
  CHECK(t.caches()[0]->total_tokens() == 200);
}

TEST_CASE("decoder input errors", "[decoder][errors]") {
  const auto m = hf::load_decoder<float>(test::fixture("gpt2_tiny"));
  auto s = m.make_state();
  CHECK_THROWS_AS(m.prefill(std::vector<std::int32_t>{}, s), Error);
  CHECK_THROWS_AS(m.prefill(std::vector<std::int32_t>{1, 71}, s), Error);
  CHECK_THROWS_AS(m.prefill(std::vector<std::int32_t>{-1}, s), Error);
  CHECK_THROWS_AS(m.prefill(std::vector<std::int32_t>(65, 1), s), Error);  // n_positions = 64
  const auto other = hf::load_decoder<float>(test::fixture("gpt2_tiny"));
  auto foreign = other.make_state();
  Tensor<float> x({1, 32});
  CHECK_THROWS_AS(m.forward_embeddings(x.view(), foreign), Error);
}

TEST_CASE("sampling: greedy and top-k and temperature are reproducible and NaN is rejected", "[sampling]") {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f, 0.0f};
  Sampler greedy;
  CHECK(greedy.sample(logits.data(), 5) == 1);
  Sampler top1({.temperature = 5.0, .top_k = 1, .seed = 3});
  CHECK(top1.sample(logits.data(), 5) == 1);
  Sampler top2({.temperature = 1.0, .top_k = 2, .seed = 4});
  int counts[5] = {};
  for (int i = 0; i < 4000; ++i) counts[top2.sample(logits.data(), 5)]++;
  CHECK(counts[0] + counts[2] + counts[4] == 0);
  const double p1 = 1.0 / (1.0 + std::exp(-0.1));  // softmax over the top two
  CHECK(double(counts[1]) / 4000 == Approx(p1).margin(0.03));
  Sampler again({.temperature = 1.0, .top_k = 2, .seed = 4});
  int first = again.sample(logits.data(), 5);
  Sampler same({.temperature = 1.0, .top_k = 2, .seed = 4});
  CHECK(same.sample(logits.data(), 5) == first);
  const std::vector<float> bad = {0.f, NAN};
  CHECK_THROWS_AS(greedy.sample(bad.data(), 2), Error);
  CHECK_THROWS_AS(Sampler({.temperature = -1.0}), Error);
}

namespace {
// Sequences of different lengths at different positions: prompts of 1, 5, 9, ... tokens.
std::vector<Decoder<float>::State> prompted(const Decoder<float>& m, Index n, const CachePolicy<float>* policy_of_odd = nullptr) {
  std::vector<Decoder<float>::State> s;
  for (Index b = 0; b < n; ++b) {
    s.push_back(m.make_state(b % 2 == 1 ? policy_of_odd : nullptr));
    std::vector<std::int32_t> prompt;
    for (Index i = 0; i <= 4 * (b % 5); ++i) prompt.push_back(std::int32_t((7 * b + 3 * i + 1) % m.config.vocab_size));
    m.prefill(prompt, s.back());
  }
  return s;
}

// decode_batch of every state, then of its copies one at a time: the same logits (max |difference|).
double batched_vs_alone(const Decoder<float>& m, Index n, Index steps, const CachePolicy<float>* policy_of_odd = nullptr) {
  auto batched = prompted(m, n, policy_of_odd), alone = prompted(m, n, policy_of_odd);
  double worst = 0;
  for (Index t = 0; t < steps; ++t) {
    std::vector<std::int32_t> tokens;
    std::vector<Decoder<float>::State*> ptrs;
    for (Index b = 0; b < n; ++b) tokens.push_back(std::int32_t((b * 11 + t * 5 + 2) % m.config.vocab_size)), ptrs.push_back(&batched[std::size_t(b)]);
    const Tensor<float> got = m.decode_batch(tokens, ptrs);
    REQUIRE(got.rows() == n);
    for (Index b = 0; b < n; ++b) {
      const Tensor<float> want = m.decode(tokens[std::size_t(b)], alone[std::size_t(b)]);
      for (Index v = 0; v < m.config.vocab_size; ++v) worst = std::max(worst, double(std::abs(got(b, v) - want(0, v))));
      CHECK(batched[std::size_t(b)].position() == alone[std::size_t(b)].position());
      CHECK(batched[std::size_t(b)].bytes() == alone[std::size_t(b)].bytes());
    }
  }
  return worst;
}
}  // namespace

TEST_CASE("batched decode equals each sequence decoded alone", "[decoder][invariant][batch]") {
  for (const char* dir : {"llama_tiny", "gpt2_tiny"}) {
    INFO(dir);
    Decoder<float> m = hf::load_decoder<float>(test::fixture(dir));
    // Up to 16 sequences: the one-row kernel's arithmetic whatever the batch (exact).
    CHECK(batched_vs_alone(m, 1, 2) == 0.0);
    CHECK(batched_vs_alone(m, 3, 4) == 0.0);
    CHECK(batched_vs_alone(m, 16, 2) == 0.0);
    // More: the packed GEMM for the products (within rounding).
    CHECK(batched_vs_alone(m, 20, 2) <= 1e-5);
    // A cache policy on every other sequence (its own budget and evictions), none on the rest.
    const policies::H2OPolicy<float> h2o(Budget::of_tokens(6));
    CHECK(batched_vs_alone(m, 5, 8, &h2o) == 0.0);
    m.compress_weights(WeightFormat::q8);
    CHECK(batched_vs_alone(m, 6, 3) == 0.0);
    // A 16-bit KV cache (with the policy's evictions moving 16-bit rows).
    m.set_kv_format(WeightFormat::f16);
    CHECK(batched_vs_alone(m, 5, 8, &h2o) == 0.0);
  }
  // TTT models (Transformer and Mamba backbones, linear and MLP inner models): the projections
  // batched, the inner loop per state; prompts of 1-17 tokens put the states at different points
  // of their mini-batches, and 20 steps cross mini-batch boundaries.
  for (const char* dir : {"ttt/model_linear_T", "ttt/model_mlp_M"}) {
    INFO(dir);
    const auto ttt_model = ttt::load_decoder<float>(test::fixture(dir));
    CHECK(batched_vs_alone(ttt_model, 5, 20) == 0.0);
  }
}

TEST_CASE("batched decode refuses a bad batch", "[decoder][batch][errors]") {
  const auto m = hf::load_decoder<float>(test::fixture("llama_tiny"));
  const auto other = hf::load_decoder<float>(test::fixture("llama_tiny"));
  auto a = m.make_state(), b = m.make_state(), c = other.make_state();
  const std::vector<std::int32_t> two = {1, 2}, one = {1};
  CHECK_THROWS_AS(m.decode_batch(two, std::vector<Decoder<float>::State*>{&a}), Error);        // counts differ
  CHECK_THROWS_AS(m.decode_batch(two, std::vector<Decoder<float>::State*>{&a, &a}), Error);    // one state twice
  CHECK_THROWS_AS(m.decode_batch(two, std::vector<Decoder<float>::State*>{&a, &c}), Error);    // another model's state
  CHECK_THROWS_AS(m.decode_batch(two, std::vector<Decoder<float>::State*>{&a, nullptr}), Error);
  CHECK_THROWS_AS(m.decode_batch({}, std::vector<Decoder<float>::State*>{}), Error);
  const std::vector<std::int32_t> bad = {1, 9999};
  CHECK_THROWS_AS(m.decode_batch(bad, std::vector<Decoder<float>::State*>{&a, &b}), Error);     // outside the vocabulary
  CHECK(m.decode_batch(one, std::vector<Decoder<float>::State*>{&b}).rows() == 1);
}
