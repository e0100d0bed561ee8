// Token tables: every column stays in lockstep through append, evict (slot reuse) and gather (rows
// are tagged), policy columns are packed, memory is released, copies are deep, bad indices are Errors.
#include <algorithm>
#include <numeric>
#include <random>

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

namespace {
// A table whose every column is a function of the token's position p: keys p + c / 100, values
// -p, a float column [3] = p + 0.5, a double column [2] = p * 1e-3 and p + 1e12 (would lose digits
// in float), an int64 column = 7 p.
struct Tagged {
  TokenTable<float> t{5};
  Index f = t.add_column("f", 3), dbl = t.add_column<double>("d", 2), i64 = t.add_column<std::int64_t>("i", 1);
  std::int64_t next = 0;
  void append(Index n) {
    Tensor<float> k({n, 5}), v({n, 5});
    std::vector<std::int64_t> pos;
    for (Index r = 0; r < n; ++r, ++next) {
      pos.push_back(next);
      for (Index c = 0; c < 5; ++c) k(r, c) = float(next) + float(c) / 100.f, v(r, c) = -float(next);
    }
    t.append(k.view(), v.view(), pos);
    for (Index r = t.size() - n; r < t.size(); ++r) {
      const std::int64_t p = t.position(r);
      for (Index c = 0; c < 3; ++c) t.column(f)(r, c) = float(p) + 0.5f;
      t.column<double>(dbl)(r, 0) = double(p) * 1e-3, t.column<double>(dbl)(r, 1) = double(p) + 1e12;
      t.column<std::int64_t>(i64)(r, 0) = 7 * p;
    }
  }
  // Every column of every row agrees with the row's position.
  bool lockstep() const {
    for (Index r = 0; r < t.size(); ++r) {
      const std::int64_t p = t.position(r);
      for (Index c = 0; c < 5; ++c)
        if (t.keys()(r, c) != float(p) + float(c) / 100.f || t.values()(r, c) != -float(p)) return false;
      for (Index c = 0; c < 3; ++c)
        if (t.column(f)(r, c) != float(p) + 0.5f) return false;
      if (t.column<double>(dbl)(r, 0) != double(p) * 1e-3 || t.column<double>(dbl)(r, 1) != double(p) + 1e12) return false;
      if (t.column<std::int64_t>(i64)(r, 0) != 7 * p) return false;
    }
    return true;
  }
  std::vector<std::int64_t> sorted_positions() const {
    auto p = t.positions();
    std::sort(p.begin(), p.end());
    return p;
  }
};
}  // namespace

TEST_CASE("evict reuses slots: every column of a row moves together, whatever the mix of evictions", "[kv_cache]") {
  Tagged a;
  a.append(40);
  std::mt19937 rng(5);
  std::vector<std::int64_t> alive(40);
  std::iota(alive.begin(), alive.end(), 0);
  for (int round = 0; round < 60; ++round) {
    // Evict a random subset (sometimes the tail, sometimes the head, sometimes one row), append some.
    const Index k = std::uniform_int_distribution<Index>(0, std::min<Index>(a.t.size(), 6))(rng);
    std::vector<Index> rows(std::size_t(a.t.size()));
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), rng);
    rows.resize(std::size_t(k));
    for (Index r : rows) alive.erase(std::find(alive.begin(), alive.end(), a.t.position(r)));
    a.t.evict(rows);
    REQUIRE(a.lockstep());
    const Index n = std::uniform_int_distribution<Index>(0, 4)(rng);
    for (Index i = 0; i < n; ++i) alive.push_back(a.next + i);
    a.append(n);
    REQUIRE(a.lockstep());
    REQUIRE(a.sorted_positions() == alive);
  }
  // A gather (NAMM's order-keeping compaction) after slot reuse keeps lockstep too.
  std::vector<Index> every_other;
  for (Index i = 0; i < a.t.size(); i += 2) every_other.push_back(i);
  a.t.gather(every_other);
  CHECK(a.lockstep());
}

TEST_CASE("evict with slot reuse touches only the evicted slots; without it, it compacts in order", "[kv_cache]") {
  Tagged a;
  a.append(10);
  a.t.evict(std::vector<Index>{2});  // the last row (position 9) fills slot 2
  CHECK(a.t.positions() == std::vector<std::int64_t>{0, 1, 9, 3, 4, 5, 6, 7, 8});
  a.t.evict(std::vector<Index>{8, 0});  // row 8 is the last row itself: only slot 0 is refilled (by row 7)
  CHECK(a.t.positions() == std::vector<std::int64_t>{7, 1, 9, 3, 4, 5, 6});
  CHECK(a.lockstep());
  Tagged b;
  b.t.set_slot_reuse(false);
  b.append(10);
  b.t.evict(std::vector<Index>{2, 0});
  CHECK(b.t.positions() == std::vector<std::int64_t>{1, 3, 4, 5, 6, 7, 8, 9});
  CHECK(b.lockstep());
  CHECK_THROWS_AS(a.t.evict(std::vector<Index>{1, 1}), Error);
  CHECK_THROWS_AS(a.t.evict(std::vector<Index>{7}), Error);
  CHECK_THROWS_AS(a.t.evict(std::vector<Index>{-1}), Error);
  CHECK(a.lockstep());  // failed calls changed nothing
  CHECK_THROWS_AS(a.t.column(a.dbl), Error);  // a double column read as float
  CHECK_THROWS_AS(a.t.column(99), Error);
  CHECK_THROWS_AS(a.t.add_column<double>("f", 3), Error);  // same name, other type
}

TEST_CASE("policy columns are packed: bytes per token count each column at its own size", "[kv_cache]") {
  TokenTable<float> t(128);
  CHECK(t.packed_row_bytes() == 8);  // the position alone
  t.add_column<double>("h2o", 1);
  CHECK(t.packed_row_bytes() == 16);
  TokenTable<float> namm(128);
  namm.add_column("ema", 17), namm.add_column("history", 32);
  CHECK(namm.packed_row_bytes() == 208);  // 8 + 4 * (17 + 32) = 204, rounded to 8: no 64-byte padding per column
  CHECK(namm.bytes_per_token() == 2 * 128 * 4 + 208);
  TokenTable<float> one(128);
  one.add_column("tova", 1);
  CHECK(one.packed_row_bytes() == 16);  // 8 + 4, rounded to the 8-byte row alignment
  // Registering a column after tokens exist widens every row and keeps the old contents.
  Tagged a;
  a.append(6);
  const Index late = a.t.add_column("late", 2);
  CHECK(a.lockstep());
  CHECK(a.t.column(late)(5, 1) == 0.f);
  // Bytes: the capacity of keys, values and packed rows; eviction returns memory.
  a.append(200);
  const std::size_t big = a.t.bytes();
  std::vector<Index> most(190);
  std::iota(most.begin(), most.end(), 0);
  a.t.evict(most);
  CHECK(a.t.bytes() < big / 4);
  CHECK(a.lockstep());
}

TEST_CASE("one token in and one out per step with slot reuse does not reallocate", "[kv_cache]") {
  Tagged a;
  a.append(100);
  std::size_t steady = 0;
  for (Index step = 0; step < 50; ++step) {
    a.append(1);
    const auto pos = a.t.positions();
    const Index oldest = Index(std::min_element(pos.begin(), pos.end()) - pos.begin());
    a.t.evict(std::vector<Index>{oldest});
    if (step == 1) steady = a.t.bytes();
    if (step > 1) CHECK(a.t.bytes() == steady);
  }
  CHECK(a.t.size() == 100);
  CHECK(a.sorted_positions().front() == 50);
  CHECK(a.lockstep());
}

TEST_CASE("a 16-bit token table rounds on append and keeps rows in lockstep through evict and gather", "[kv_cache][kv16]") {
  for (WeightFormat f : {WeightFormat::f16, WeightFormat::bf16}) {
    INFO(format_name(f));
    const Index n = 60, d = 40;  // d not a multiple of the 32-value SIMD step: the tail is widened too
    TokenTable<float> t(d);
    t.set_format(f);
    CHECK(t.format() == f);
    const Index tag = t.add_column("tag", 1);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.f, 3.f);
    Tensor<float> k({n, d}), v({n, d});
    std::vector<std::int64_t> pos;
    for (Index i = 0; i < n; ++i) {
      for (Index c = 0; c < d; ++c) k(i, c) = normal(rng), v(i, c) = normal(rng);
      k(i, 0) = float(i);  // exact in both formats (below 256): the row's tag
      pos.push_back(500 + i);
    }
    t.append(k.view(), v.view(), pos);
    for (Index i = 0; i < n; ++i) t.column(tag)(i, 0) = float(i);
    // Each stored value is the scalar rounding of the float (nearest even), and reads back exactly.
    const auto round = [&](float x) { return f == WeightFormat::f16 ? half_to_float(float_to_half(x)) : bf16_to_float(float_to_bf16(x)); };
    Tensor<float> ks, vs;
    const ConstView<float> kr = t.keys_as(ks), vr = t.values_as(vs);
    bool exact = true, moved = false;
    for (Index i = 0; i < n; ++i)
      for (Index c = 0; c < d; ++c) {
        exact = exact && kr(i, c) == round(k(i, c)) && vr(i, c) == round(v(i, c));
        moved = moved || kr(i, c) != k(i, c);
        exact = exact && t.keys16()(i, c) == (f == WeightFormat::f16 ? float_to_half(k(i, c)) : float_to_bf16(k(i, c)));
      }
    CHECK(exact);
    CHECK(moved);  // the rounding is real (else this test would not see a missing conversion)
    // Two bytes per key and value (rows padded to 64 bytes); half an f32 table's at head_dim 128.
    CHECK(t.bytes_per_token() == 2 * 2 * std::size_t(padded_cols<std::uint16_t>(d)) + t.packed_row_bytes());
    TokenTable<float> wide(128), narrow(128);
    narrow.set_format(f);
    CHECK(narrow.bytes_per_token() - narrow.packed_row_bytes() == (wide.bytes_per_token() - wide.packed_row_bytes()) / 2);
    // Evict (slot reuse) and gather move whole rows: key tag, value row, position and column agree.
    t.evict(std::vector<Index>{0, 7, 59, 30});
    std::vector<Index> keep;
    for (Index i = 0; i < t.size(); i += 2) keep.push_back(i);
    t.gather(keep);
    REQUIRE(t.size() == 28);
    const ConstView<float> k2 = t.keys_as(ks), v2 = t.values_as(vs);
    bool lockstep = true;
    for (Index i = 0; i < t.size(); ++i) {
      const Index src = Index(k2(i, 0));
      lockstep = lockstep && t.position(i) == 500 + src && t.column(tag)(i, 0) == float(src) && v2(i, 5) == round(v(src, 5));
    }
    CHECK(lockstep);
    // key_rows of a slice, set_key_row rounds, copies are deep.
    Tensor<float> one;
    CHECK(t.key_rows(3, 2, one).row(1)[0] == k2(4, 0));
    std::vector<float> key(std::size_t(d), 1.0f / 3.0f);
    auto c = t.copy();
    c.set_key_row(2, key.data());
    CHECK(c.key_rows(2, 1, one)(0, 3) == round(1.0f / 3.0f));
    CHECK(t.key_rows(2, 1, one)(0, 3) == k2(2, 3));
    // Errors: the f32 views of a 16-bit table, a format change with tokens, rows out of range.
    REQUIRE_THROWS_WITH(t.keys(), Catch::Contains(std::string("stores its keys and values as ") + std::string(format_name(f))));
    REQUIRE_THROWS_WITH(t.set_format(WeightFormat::f32), Catch::Contains("holds 28 tokens"));
    REQUIRE_THROWS_WITH(t.key_rows(27, 2, one), Catch::Contains("rows [27, 29) outside [0, 28)"));
    t.clear();
    CHECK(t.size() == 0);
    t.set_format(WeightFormat::f32);
    CHECK_NOTHROW(t.keys());
  }
  TokenTable<float> t(8);
  REQUIRE_THROWS_WITH(t.keys16(), Catch::Contains("model's type (f32)"));
  REQUIRE_THROWS_WITH(t.set_format(WeightFormat::q4), Catch::Contains("f32, f16 or bf16, got q4"));
  TokenTable<double> td(8);
  REQUIRE_THROWS_WITH(td.set_format(WeightFormat::f16), Catch::Contains("need a float model"));
  LayerCache<float> lc(2, 8);
  lc.set_format(WeightFormat::bf16);
  CHECK(lc.copy().head(1).format() == WeightFormat::bf16);
  CacheViews<float> views;
  lc.views(views);
  CHECK(views.k16.size() == 2);
  CHECK(views.k.empty());
}
