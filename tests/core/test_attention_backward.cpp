// Fused attention backward (and the forward's lse, sliding window and NaN rule) against a slow,
// materialised double reference that builds S, P, dP and dS explicitly: every mask kind, windows,
// MHA/GQA/MQA, query offsets, rows that see nothing; finite differences on a tiny case.
#include <mutex>

#include "core/attention_reference.hpp"

using namespace engram;
using namespace engram::test::attention_ref;

namespace {

template <class T>
void require_lse(ConstView<T> got, const test::Mat& ref, double tol) {
  for (Index i = 0; i < ref.rows; ++i)
    for (Index h = 0; h < ref.cols; ++h) {
      INFO("lse row " << i << " head " << h << ": got " << got(i, h) << ", expected " << ref(i, h));
      if (ref(i, h) == -INFINITY) REQUIRE(got(i, h) == -std::numeric_limits<T>::infinity());
      else REQUIRE(std::abs(double(got(i, h)) - ref(i, h)) <= tol);
    }
}

template <class T>
void run_case(const Case& c, std::uint64_t seed) {
  auto p = make_problem<T>(c, seed);
  const Reference ref = reference(p);
  INFO(c);
  attention<T>(p.forward_input());
  test::require_close<T>(p.out.view(), ref.out, tolerance<T>(c, 5.0), "forward output");
  require_lse<T>(p.lse.view(), ref.lse, tolerance<T>(c, 1.0));
  attention_backward<T>(p.backward_input());
  test::require_close<T>(p.dq.view(), ref.dq, tolerance<T>(c, test::max_abs(ref.dq)), "dq");
  for (Index kv = 0; kv < c.n_kv; ++kv) {
    test::require_close<T>(p.dk[std::size_t(kv)].view(), ref.dk[std::size_t(kv)], tolerance<T>(c, test::max_abs(ref.dk[std::size_t(kv)])), "dk");
    test::require_close<T>(p.dv[std::size_t(kv)].view(), ref.dv[std::size_t(kv)], tolerance<T>(c, test::max_abs(ref.dv[std::size_t(kv)])), "dv");
  }
}

std::vector<Case> backward_cases() {
  std::vector<Case> cs;
  cs.push_back({37, 2, 2, 16, {37, 37}});                       // MHA, causal, from an empty cache
  cs.push_back({70, 4, 2, 24, {70, 70}});                       // GQA (2 query heads per KV head), d not a register multiple
  cs.push_back({100, 4, 1, 8, {100}});                          // MQA, several key and query blocks
  cs.push_back({1, 4, 2, 16, {50, 50}});                        // one query at the end (decode)
  cs.push_back({20, 4, 2, 16, {90, 90}});                       // a chunk at the end of the keys
  cs.push_back({3, 4, 2, 16, {20, 9}});                         // KV heads of different lengths
  cs.push_back({10, 2, 1, 16, {30}, MaskKind::causal, 5});      // explicit offset: later keys invisible to everyone
  cs.push_back({100, 2, 1, 16, {100}, MaskKind::causal, -1, 17});  // sliding window
  cs.push_back({40, 4, 2, 8, {75, 75}, MaskKind::causal, -1, 9});  // window with a query offset
  cs.push_back({33, 2, 1, 16, {33}, MaskKind::causal, -1, 1});     // window of one: each query sees itself
  cs.push_back({6, 2, 1, 8, {10}, MaskKind::causal, 8, 2});        // queries past the keys: rows 3.. see nothing
  cs.push_back({40, 2, 1, 32, {40}, MaskKind::reverse_causal});
  cs.push_back({12, 2, 1, 16, {12}, MaskKind::reverse_causal, 5});  // rows 7.. see nothing
  cs.push_back({20, 2, 2, 16, {33, 33}, MaskKind::none});
  cs.push_back({24, 2, 2, 16, {31, 31}, MaskKind::custom});        // row 1 sees nothing
  cs.push_back({9, 4, 1, 16, {70}, MaskKind::custom});
  return cs;
}

}  // namespace

TEMPLATE_TEST_CASE("attention_backward equals the materialised reference for every mask, window and GQA", "[attention][backward]",
                   float, double) {
  std::uint64_t seed = 1;
  for (const Case& c : backward_cases()) run_case<TestType>(c, seed++);
}

TEMPLATE_TEST_CASE("sliding-window forward equals the masked reference on both kernel paths and in the decode shape",
                   "[attention][window]", float, double) {
  std::uint64_t seed = 500;
  for (const Case& c : std::vector<Case>{
           {5, 2, 1, 16, {5}, MaskKind::causal, -1, 3},         // row-dot path (few queries)
           {100, 2, 2, 16, {100, 100}, MaskKind::causal, -1, 40},  // tiled path, several query blocks
           {40, 4, 2, 24, {150, 150}, MaskKind::causal, -1, 70},   // chunk at the end of the keys
           {1, 4, 1, 16, {50}, MaskKind::causal, 49, 8},           // decode: one query, offset = Tk - 1
           {1, 4, 1, 16, {50}, MaskKind::causal, 49, 1},
           {7, 2, 1, 8, {40}, MaskKind::causal, 10, 4}}) {          // explicit offset, later keys unseen
    auto p = make_problem<TestType>(c, seed++);
    const Reference ref = reference(p, false);
    INFO(c);
    attention<TestType>(p.forward_input());
    test::require_close<TestType>(p.out.view(), ref.out, tolerance<TestType>(c, 5.0), "windowed output");
    require_lse<TestType>(p.lse.view(), ref.lse, tolerance<TestType>(c, 1.0));
  }
}

TEST_CASE("a window as long as the sequence equals full causal attention, forward and backward", "[attention][window]") {
  for (Index tq : {Index(9), Index(100)}) {
    const Case full{tq, 2, 1, 16, {tq}};
    auto a = make_problem<float>(full, 7);
    auto b = make_problem<float>(full, 7);
    attention<float>(a.forward_input());
    attention_backward<float>(a.backward_input());
    for (Index window : {tq, tq + 50}) {
      b.c.window = window;
      attention<float>(b.forward_input());
      attention_backward<float>(b.backward_input());
      INFO("tq " << tq << " window " << window);
      const double tol = 4 * test::eps<float>();
      test::require_close<float>(b.out.view(), test::to_mat<float>(a.out.view()), tol, "out");
      test::require_close<float>(b.lse.view(), test::to_mat<float>(a.lse.view()), tol * 8, "lse");
      test::require_close<float>(b.dq.view(), test::to_mat<float>(a.dq.view()), tol * 8, "dq");
      test::require_close<float>(b.dk[0].view(), test::to_mat<float>(a.dk[0].view()), tol * 8, "dk");
      test::require_close<float>(b.dv[0].view(), test::to_mat<float>(a.dv[0].view()), tol * 8, "dv");
    }
  }
}

TEST_CASE("sliding window: FLOP pairs, and the sink sees only the window", "[attention][window]") {
  const Case c{40, 4, 2, 16, {60, 60}, MaskKind::causal, -1, 7};
  auto p = make_problem<float>(c, 3);
  auto in = p.forward_input();
  double pairs = 0;
  for (Index i = 0; i < c.tq; ++i)
    for (Index j = 0; j < 60; ++j) pairs += visible(p, 60, i, j);
  CHECK(visible_pairs(in, 0) == pairs);
  CHECK(pairs == 40 * 7);  // every query (index >= 20) has 7 keys in its window

  // A sink accumulates the group-averaged probabilities; they equal the reference's.
  struct Sum : ProbabilitySink<float> {
    std::vector<test::Mat> probs;
    std::mutex mutex;
    void consume(Index kv, Index q0, Index k0, ConstView<float> tile) override {
      std::lock_guard<std::mutex> lock(mutex);
      for (Index r = 0; r < tile.rows(); ++r)
        for (Index j = 0; j < tile.cols(); ++j) probs[std::size_t(kv)](q0 + r, k0 + j) += double(tile(r, j));
    }
  } sink;
  sink.probs.assign(2, test::Mat(40, 60));
  in.sink = &sink;
  attention<float>(in);
  const Reference ref = reference(p, false);
  test::require_close<float>(p.out.view(), ref.out, tolerance<float>(c, 5.0), "sink-path output");
  require_lse<float>(p.lse.view(), ref.lse, tolerance<float>(c, 1.0));
  for (Index kv = 0; kv < 2; ++kv) {
    test::Mat avg(40, 60);
    for (Index g = 0; g < 2; ++g)
      for (std::size_t e = 0; e < avg.v.size(); ++e) avg.v[e] += ref.probs[std::size_t(kv * 2 + g)].v[e] / 2;
    double worst = 0;
    for (std::size_t e = 0; e < avg.v.size(); ++e) worst = std::max(worst, std::abs(avg.v[e] - sink.probs[std::size_t(kv)].v[e]));
    CHECK(worst <= tolerance<float>(c, 1.0));
  }
}

TEST_CASE("attention: NaN scores give NaN rows, never zeros; only the mask gives a zero row", "[attention][nan]") {
  for (Index tq : {Index(4), Index(40)}) {  // row-dot path and tiled path
    for (bool with_sink : {false, true}) {
      Case c{tq, 2, 1, 16, {tq}, MaskKind::custom};
      auto p = make_problem<float>(c, 11);
      p.q(2, 3) = std::numeric_limits<float>::quiet_NaN();  // query row 2, head 0
      p.mask(0, 0) = p.mask(2, 0) = 1;                       // rows 0 and 2 see at least one key
      auto in = p.forward_input();
      struct Null : ProbabilitySink<float> {
        void consume(Index, Index, Index, ConstView<float>) override {}
      } sink;
      if (with_sink) in.sink = &sink;
      attention<float>(in);
      INFO("tq " << tq << " sink " << with_sink);
      for (Index e = 0; e < 16; ++e) CHECK(std::isnan(p.out(2, e)));
      CHECK(std::isnan(p.lse(2, 0)));
      for (Index e = 16; e < 32; ++e) CHECK(std::isfinite(p.out(2, e)));  // head 1 is clean
      for (Index e = 0; e < 32; ++e) CHECK(p.out(1, e) == 0.f);         // row 1 sees nothing (mask)
      CHECK(p.lse(1, 0) == -std::numeric_limits<float>::infinity());
      for (Index e = 0; e < 32; ++e) CHECK(std::isfinite(p.out(0, e)));
      // The backward carries the NaN on into dq (and dk/dv of the keys that row sees).
      attention_backward<float>(p.backward_input());
      CHECK(std::isnan(p.dq(2, 0)));
    }
  }
  // A NaN key poisons exactly the rows that see it.
  Case c{20, 1, 1, 16, {20}};
  auto p = make_problem<float>(c, 12);
  p.k[0](10, 0) = std::numeric_limits<float>::quiet_NaN();
  attention<float>(p.forward_input());
  for (Index i = 0; i < 20; ++i) CHECK(std::isnan(p.out(i, 0)) == (i >= 10));
}

TEST_CASE("attention_backward matches finite differences of the forward on a tiny case", "[attention][backward][fd]") {
  // One thread: hundreds of tiny forwards, where parallel regions would cost more than the work.
  const test::ThreadCount one(1);
  for (const Case& c : std::vector<Case>{{6, 2, 1, 4, {9}}, {5, 2, 2, 3, {5, 5}, MaskKind::causal, -1, 2},
                                         {4, 2, 1, 4, {6}, MaskKind::none}, {5, 2, 1, 4, {7}, MaskKind::custom}}) {
    auto p = make_problem<double>(c, 21);
    auto w = test::random_tensor<double>({c.tq, c.n_heads * c.d}, 22);
    p.dout = w.copy();
    attention<double>(p.forward_input());
    attention_backward<double>(p.backward_input());
    const auto loss = [&] {
      Tensor<double> out({c.tq, c.n_heads * c.d}), lse({c.tq, c.n_heads});
      auto in = p.forward_input();
      in.out = out.view();
      in.lse = lse.view();
      attention<double>(in);
      double s = 0;
      for (Index i = 0; i < c.tq; ++i)
        for (Index e = 0; e < c.n_heads * c.d; ++e) s += out(i, e) * w(i, e);
      return s;
    };
    const auto check_fd = [&](View<double> x, ConstView<double> grad, const char* what) {
      const double h = 1e-5;
      double err = 0, scale = 0;
      for (Index r = 0; r < x.rows(); ++r)
        for (Index e = 0; e < x.cols(); ++e) {
          const double keep = x(r, e);
          x(r, e) = keep + h;
          const double up = loss();
          x(r, e) = keep - h;
          const double down = loss();
          x(r, e) = keep;
          const double fd = (up - down) / (2 * h);
          err = std::max(err, std::abs(fd - grad(r, e)));
          scale = std::max(scale, std::abs(fd));
        }
      INFO(c << " " << what << ": max error " << err << ", max |fd| " << scale);
      REQUIRE(err <= 1e-6 * scale);
    };
    check_fd(p.q.view(), p.dq.view(), "dq");
    for (Index kv = 0; kv < c.n_kv; ++kv) {
      check_fd(p.k[std::size_t(kv)].view(), p.dk[std::size_t(kv)].view(), "dk");
      check_fd(p.v[std::size_t(kv)].view(), p.dv[std::size_t(kv)].view(), "dv");
    }
  }
}

TEST_CASE("attention_backward is deterministic for a thread count and agrees across thread counts", "[attention][backward]") {
  const Case c{150, 2, 1, 16, {150}};
  auto p = make_problem<float>(c, 31);
  attention<float>(p.forward_input());
  const test::ThreadCount threads(2);
  attention_backward<float>(p.backward_input());
  auto dq1 = p.dq.copy(), dk1 = p.dk[0].copy();
  attention_backward<float>(p.backward_input());
  for (Index i = 0; i < c.tq; ++i)
    for (Index e = 0; e < 32; ++e) REQUIRE(p.dq(i, e) == dq1(i, e));
  for (Index j = 0; j < 150; ++j)
    for (Index e = 0; e < 16; ++e) REQUIRE(p.dk[0](j, e) == dk1(j, e));
  threads.set(1);
  attention_backward<float>(p.backward_input());
  test::require_close<float>(p.dq.view(), test::to_mat<float>(dq1.view()), 1e-5 * std::max(1.0, test::max_abs(test::to_mat<float>(dq1.view()))),
                             "dq with 1 vs 2 threads");
}

TEST_CASE("attention_backward and the forward reject bad inputs", "[attention][backward][errors]") {
  const Case c{8, 4, 2, 8, {8, 8}};
  auto p = make_problem<float>(c, 41);
  attention<float>(p.forward_input());
  CHECK_NOTHROW(attention_backward<float>(p.backward_input()));
  auto in = p.backward_input();
  Tensor<float> bad_lse({8, 3});
  in.lse = bad_lse.view();
  CHECK_THROWS_AS(attention_backward<float>(in), Error);
  in = p.backward_input();
  in.lse = ConstView<float>();
  CHECK_THROWS_AS(attention_backward<float>(in), Error);  // lse is required
  in = p.backward_input();
  std::vector<View<float>> one_dk = {p.dk[0].view()};
  in.dk = one_dk;
  CHECK_THROWS_AS(attention_backward<float>(in), Error);
  in = p.backward_input();
  Tensor<float> short_dv({7, 8});
  std::vector<View<float>> dvs = {p.dv[0].view(), short_dv.view()};
  in.dv = dvs;
  CHECK_THROWS_AS(attention_backward<float>(in), Error);
  in = p.backward_input();
  Tensor<float> bad_dq({8, 31});
  in.dq = bad_dq.view();
  CHECK_THROWS_AS(attention_backward<float>(in), Error);
  in = p.backward_input();
  in.mask = MaskKind::none;
  in.window = 4;
  CHECK_THROWS_AS(attention_backward<float>(in), Error);  // a window needs the causal mask
  in.mask = MaskKind::causal;
  in.window = -1;
  CHECK_THROWS_AS(attention_backward<float>(in), Error);
  auto fwd = p.forward_input();
  fwd.mask = MaskKind::reverse_causal;
  fwd.window = 3;
  CHECK_THROWS_AS(attention<float>(fwd), Error);
  fwd = p.forward_input();
  fwd.lse = bad_lse.view();
  CHECK_THROWS_AS(attention<float>(fwd), Error);
  fwd = p.forward_input();
  fwd.offset = -2;
  CHECK_THROWS_AS(attention<float>(fwd), Error);
}
