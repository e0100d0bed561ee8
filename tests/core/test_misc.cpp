// parallel_for determinism and exception transport, thread control, FLOP counter, workspace, errors.
#include <atomic>

#include "engram/core/flops.hpp"
#include "engram/core/parallel.hpp"
#include "engram/core/workspace.hpp"
#include "test_util.hpp"

using namespace engram;

TEST_CASE("parallel_for visits every index once and rethrows the first error", "[parallel]") {
  std::vector<std::atomic<int>> hits(1000);
  parallel_for(0, 1000, [&](Index i) { hits[std::size_t(i)]++; });
  for (auto& h : hits) CHECK(h == 1);
  CHECK_THROWS_AS(parallel_for(0, 100, [](Index i) { if (i == 37) throw Error("boom"); }), Error);
  std::vector<std::atomic<int>> dyn(50);
  parallel_for_dynamic(0, 50, [&](Index i) { dyn[std::size_t(i)]++; });
  for (auto& h : dyn) CHECK(h == 1);
}

TEST_CASE("thread count control", "[parallel]") {
  const int before = num_threads();
  set_num_threads(1);
  CHECK(num_threads() == 1);
  set_num_threads(before);
  CHECK_THROWS_AS(set_num_threads(0), Error);
}

TEST_CASE("FlopCounter accumulates by category", "[flops]") {
  FlopCounter f;
  f.add(FlopCategory::mlp, 10);
  f.add(FlopCategory::attention_scores, 3);
  f.add(FlopCategory::attention_values, 4);
  CHECK(f.total() == 17);
  CHECK(f.attention() == 7);
  FlopCounter g;
  g.add(FlopCategory::mlp, 1);
  f += g;
  CHECK(f[FlopCategory::mlp] == 11);
  f.reset();
  CHECK(f.total() == 0);
  CHECK(flops::gemm(2, 3, 4) == 48);
}

TEST_CASE("thread_scratch is aligned and stable until it grows", "[workspace]") {
  struct Tag {};
  float* a = thread_scratch<Tag, 0, float>(10);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 64 == 0);
  CHECK(thread_scratch<Tag, 0, float>(5) == a);
  CHECK(thread_scratch<Tag, 1, float>(5) != a);
}

TEST_CASE("Error messages name where and what", "[errors]") {
  try {
    check_equal(3, 4, "layer 2", "n_heads");
    FAIL("no throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "layer 2: n_heads expected 4, got 3");
  }
}
