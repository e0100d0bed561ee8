// Decoder invariants: prefill(T) == T decode steps == chunked prefill; state copies fork a sequence;
// bad tokens and over-long sequences are Errors; sampling.
#include "engram/io/hf.hpp"
#include "engram/nn/sampling.hpp"
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
