// Token tables: every column stays in lockstep through append and gather (rows are tagged), memory
// is released, copies are deep, bad indices are Errors.
#include "engram/nn/kv_cache.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {
// Tags every column of row i with i so a mismatch between columns is visible.
TokenTable<float> tagged_table(Index n, Index d) {
  TokenTable<float> t(d);
  const Index tag = t.add_column("tag", 3);
  Tensor<float> k({n, d}), v({n, d});
  std::vector<std::int64_t> pos;
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < d; ++c) k(i, c) = float(i), v(i, c) = -float(i);
    pos.push_back(1000 + i);
  }
  t.append(k.view(), v.view(), pos);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < 3; ++c) t.column(tag)(i, c) = float(i) + 0.5f;
  return t;
}
void check_lockstep(const TokenTable<float>& t, const std::vector<Index>& expected_rows) {
  REQUIRE(t.size() == Index(expected_rows.size()));
  const Index tag = t.column_id("tag");
  for (Index i = 0; i < t.size(); ++i) {
    const float src = float(expected_rows[std::size_t(i)]);
    CHECK(t.keys()(i, 0) == src);
    CHECK(t.keys()(i, t.head_dim() - 1) == src);
    CHECK(t.values()(i, 1) == -src);
    CHECK(t.position(i) == 1000 + expected_rows[std::size_t(i)]);
    CHECK(t.column(tag)(i, 2) == src + 0.5f);
  }
}
}  // namespace

TEST_CASE("gather keeps the same rows of keys and values and positions and policy columns", "[kv_cache]") {
  auto t = tagged_table(40, 24);
  const std::size_t before = t.bytes();
  const std::vector<Index> kept = {0, 3, 4, 17, 39};
  t.gather(kept);
  check_lockstep(t, kept);
  CHECK(t.bytes() < before / 4);  // memory is returned, not just hidden
  // Appending after a gather keeps the column aligned; new rows have zero policy columns.
  Tensor<float> k({1, 24}), v({1, 24});
  k.fill(7.f);
  const std::vector<std::int64_t> p = {5000};
  t.append(k.view(), v.view(), p);
  CHECK(t.size() == 6);
  CHECK(t.position(5) == 5000);
  CHECK(t.column(t.column_id("tag"))(5, 0) == 0.f);
  t.gather(std::vector<Index>{});
  CHECK(t.size() == 0);
}

TEST_CASE("one token in and one out per step does not reallocate", "[kv_cache]") {
  auto t = tagged_table(100, 8);
  Tensor<float> k({1, 8}), v({1, 8});
  std::vector<Index> drop_oldest;
  for (Index i = 1; i <= 100; ++i) drop_oldest.push_back(i);
  std::size_t steady = 0;
  for (Index step = 0; step < 50; ++step) {
    const std::vector<std::int64_t> p = {2000 + step};
    t.append(k.view(), v.view(), p);
    t.gather(drop_oldest);
    if (step == 1) steady = t.bytes();
    if (step > 1) CHECK(t.bytes() == steady);
  }
  CHECK(t.size() == 100);
  CHECK(t.position(99) == 2049);
}

TEST_CASE("token tables copy deeply and reject bad input", "[kv_cache][errors]") {
  auto t = tagged_table(10, 8);
  auto c = t.copy();
  c.keys()(0, 0) = 99.f;
  CHECK(t.keys()(0, 0) == 0.f);
  CHECK_THROWS_AS(t.gather(std::vector<Index>{3, 2}), Error);
  CHECK_THROWS_AS(t.gather(std::vector<Index>{1, 1}), Error);
  CHECK_THROWS_AS(t.gather(std::vector<Index>{10}), Error);
  CHECK_THROWS_AS(t.add_column("tag", 4), Error);
  CHECK(t.add_column("tag", 3) == t.column_id("tag"));
  Tensor<float> k({2, 8}), v({3, 8});
  const std::vector<std::int64_t> p = {1, 2};
  CHECK_THROWS_AS(t.append(k.view(), v.view(), p), Error);
  check_lockstep(t, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9});  // failed calls changed nothing
}

TEST_CASE("a layer cache splits heads and registers columns in all of them", "[kv_cache]") {
  LayerCache<float> cache(3, 4);
  const Index id = cache.add_column("score", 1);
  Tensor<float> k({2, 12}), v({2, 12});
  for (Index c = 0; c < 12; ++c) k(1, c) = float(c);
  const std::vector<std::int64_t> pos = {7, 8};
  cache.append(k.view(), v.view(), pos);
  CHECK(cache.total_tokens() == 6);
  CHECK(cache.head(2).keys()(1, 0) == 8.f);
  CHECK(cache.head(1).column(id).rows() == 2);
  auto copy = cache.copy();
  copy.head(0).gather(std::vector<Index>{1});
  CHECK(cache.head(0).size() == 2);
  CHECK(copy.max_size() == 2);
  CHECK(copy.bytes() < cache.bytes());
}
