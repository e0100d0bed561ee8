// The data-parallel pieces of train/ without MPI, against a scripted in-process Collective: the
// bucketed gradient sum puts every value back where it came from whatever the bucket size, a
// one-rank collective leaves training bit-identical, failures pass through the agreement, work
// is split round-robin. (tests/mpi runs the same code over real MPI ranks.)
#include <cmath>

#include "engram/nn/init.hpp"
#include "engram/train/trainer.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

// Rank `rank` of `size`. sum() plays the other ranks: element k of the stream of summed values
// (counted over all calls) becomes scale * value + k, so a value unpacked into the wrong place
// shows. agree() throws the message it is given, as a real agreement would on every rank.
class ScriptedCollective final : public train::Collective {
 public:
  ScriptedCollective(int rank, int size, float scale = 1) : rank_(rank), size_(size), scale_(scale) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(std::span<float> v) override {
    calls.push_back(Index(v.size()));
    for (float& x : v) x = scale_ * x + float(streamed++);
  }
  void sum(std::span<double> v) override {
    for (double& x : v) x *= double(scale_);
  }
  void broadcast(std::span<std::byte>, int) override {}
  void agree(const std::string& error) override {
    ++agreements;
    if (!error.empty()) throw Error("agreed: " + error);
  }
  std::vector<Index> calls;
  Index streamed = 0, agreements = 0;

 private:
  int rank_, size_;
  float scale_;
};

Decoder<float> tiny_model(std::uint64_t seed = 61) {
  ModelConfig c = ModelConfig::llama(261, 16, 2, 4, 2, 24);
  c.max_positions = 64;
  Decoder<float> m = Decoder<float>::create(c);
  init_random(m, seed, 0.1);
  return m;
}

}  // namespace

TEST_CASE("collective: the bucketed gradient sum returns every value to its place", "[train][collective]") {
  auto m = tiny_model();
  Gradients<float> g(m);
  // Small integers: every sum below is exact in float.
  Index k = 0;
  for (auto& e : g.entries())
    for (Index r = 0; r < e.grad.rows(); ++r)
      for (Index c = 0; c < e.grad.cols(); ++c) e.grad.row(r)[c] = float((k++ * 7) % 23) - 11;
  const Index total = g.numel();
  for (const Index bucket : {Index(1), Index(5), Index(17), Index(1000), total, Index(1) << 20}) {
    Gradients<float> h(m);
    for (std::size_t i = 0; i < g.size(); ++i) h.entries()[i].grad = g.entries()[i].grad.copy();
    ScriptedCollective c(0, 4, 4);
    train::GradientReducer<float> reducer(bucket);
    reducer.sum(h, c);
    CAPTURE(bucket);
    Index streamed = 0, mismatches = 0;
    for (std::size_t i = 0; i < g.size(); ++i) {
      const Tensor<float>& before = g.entries()[i].grad;
      const Tensor<float>& after = h.entries()[i].grad;
      for (Index r = 0; r < before.rows(); ++r)
        for (Index col = 0; col < before.cols(); ++col) mismatches += after.row(r)[col] != 4 * before.row(r)[col] + float(streamed++);
    }
    REQUIRE(mismatches == 0);
    REQUIRE(c.streamed == total);
    // Dense buckets: every call full but the last.
    REQUIRE(Index(c.calls.size()) == (total + std::min(bucket, total) - 1) / std::min(bucket, total));
    Index short_calls = 0;
    for (std::size_t i = 0; i + 1 < c.calls.size(); ++i) short_calls += c.calls[i] != std::min(bucket, total);
    REQUIRE(short_calls == 0);
  }
}

TEST_CASE("collective: training with a one-rank collective is bit-identical to a single process", "[train][collective]") {
  const auto corpus = train::TextCorpus::from_text(std::string(3000, 'a') + "the quick brown fox jumps over the lazy dog. " + std::string(2000, 'b'),
                                                   "test text", 0.3);
  const train::WindowSource source(corpus, 24, 99);
  auto run = [&](train::Collective* c, Decoder<float>& m) {
    train::TrainerOptions o;
    o.steps = 4, o.batch = 4, o.eval_every = 2, o.eval_batches = 1, o.log_every = 1;
    o.schedule = {.peak = 3e-3, .min_lr = 3e-4, .warmup = 1, .total = 4};
    o.collective = c;
    train::Trainer<float> t(m, source, o);
    std::vector<double> curve;
    t.run([&](const train::Progress& p) { curve.push_back(p.loss), curve.push_back(p.held_out); });
    return curve;
  };
  struct Identity final : train::Collective {
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void sum(std::span<float>) override {}
    void sum(std::span<double>) override {}
    void broadcast(std::span<std::byte>, int) override {}
    void agree(const std::string& e) override {
      if (!e.empty()) throw Error(e);
    }
  } one;
  auto a = tiny_model(), b = tiny_model();
  const auto alone = run(nullptr, a), with = run(&one, b);
  REQUIRE(alone.size() == 8);
  for (std::size_t i = 0; i < alone.size(); ++i) REQUIRE((alone[i] == with[i] || (std::isnan(alone[i]) && std::isnan(with[i]))));
  Gradients<float> ga(a), gb(b);
  REQUIRE(train::parameter_fingerprint(ga) == train::parameter_fingerprint(gb));
}

TEST_CASE("collective: failures pass through the agreement, work is split round-robin", "[train][collective]") {
  SECTION("all_or_none") {
    REQUIRE_THROWS_AS(train::all_or_none(nullptr, [] { throw std::out_of_range("local"); }), std::out_of_range);  // no collective: untouched
    ScriptedCollective c(1, 3);
    REQUIRE_THROWS_WITH(train::all_or_none(&c, [] { fail("here", "broken"); }), "agreed: here: broken");
    REQUIRE_THROWS_WITH(train::all_or_none(&c, [] { throw 42; }), Catch::Contains("not a std::exception"));
    train::all_or_none(&c, [] {});
    REQUIRE(c.agreements == 3);
  }
  SECTION("evaluate_across_ranks") {
    ScriptedCollective c(1, 3);
    std::vector<int> seen(8, 0);
    const auto v = train::evaluate_across_ranks(&c, 8, 2, [&](Index i, double* out) {
      seen[std::size_t(i)] += 1;
      out[0] = double(i) + 0.5, out[1] = -double(i);
    });
    REQUIRE(v.size() == 16);
    for (Index i = 0; i < 8; ++i) {
      REQUIRE(seen[std::size_t(i)] == (i % 3 == 1));
      REQUIRE(v[std::size_t(2 * i)] == (i % 3 == 1 ? double(i) + 0.5 : 0.0));  // the others' items arrive with their sums
    }
    REQUIRE_THROWS_WITH(train::evaluate_across_ranks(&c, 8, 1, [](Index i, double*) { check(i != 4, "f", "bad ", i); }), "agreed: f: bad 4");
    const auto local = train::evaluate_across_ranks(nullptr, 5, 1, [](Index i, double* out) { out[0] = double(i * i); });
    REQUIRE(local == std::vector<double>{0, 1, 4, 9, 16});
  }
  SECTION("fingerprint") {
    std::vector<float> x(37, 1.0f);
    const auto h = train::fingerprint(x.data(), x.size() * sizeof(float));
    x[36] = std::nextafter(1.0f, 2.0f);
    REQUIRE(train::fingerprint(x.data(), x.size() * sizeof(float)) != h);
    REQUIRE(train::fingerprint(x.data(), 4) == train::fingerprint(x.data(), 4));
  }
}
