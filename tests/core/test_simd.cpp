// Vector kernels against double-precision loops over awkward lengths, float and double.
#include <cmath>

#include "engram/core/simd.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {
template <class T>
std::vector<T> random_vector(Index n, std::uint64_t seed) {
  auto t = test::random_tensor<T>({n}, seed);
  return std::vector<T>(t.data(), t.data() + n);
}
double abs_sum(const auto& v) {
  double s = 0;
  for (auto x : v) s += std::abs(double(x));
  return s;
}
}  // namespace

TEMPLATE_TEST_CASE("dot and sum and max match double loops", "[simd]", float, double) {
  std::vector<Index> sizes = test::kAwkwardSizes;
  sizes.push_back(0);
  sizes.push_back(1000);
  for (Index n : sizes) {
    auto a = random_vector<TestType>(n, 10 + n), b = random_vector<TestType>(n, 20 + n);
    double dot = 0, sum = 0, mx = -INFINITY, dot_bound = 0;
    for (Index i = 0; i < n; ++i) {
      dot += double(a[i]) * double(b[i]);
      dot_bound += std::abs(double(a[i]) * double(b[i]));
      sum += double(a[i]);
      mx = std::max(mx, double(a[i]));
    }
    INFO("n = " << n);
    // Summation error grows at most linearly in n; a few ulps of the absolute sum bound it.
    CHECK(std::abs(double(simd::dot(a.data(), b.data(), n)) - dot) <= 4 * n * test::eps<TestType>() * dot_bound + 1e-300);
    CHECK(std::abs(double(simd::sum(a.data(), n)) - sum) <= 4 * n * test::eps<TestType>() * abs_sum(a) + 1e-300);
    CHECK(double(simd::max(a.data(), n)) == mx);
  }
}

TEMPLATE_TEST_CASE("axpy and scale and add and mul are exact elementwise", "[simd]", float, double) {
  for (Index n : test::kAwkwardSizes) {
    auto x = random_vector<TestType>(n, 30 + n), y = random_vector<TestType>(n, 40 + n);
    auto y0 = y;
    simd::axpy(TestType(0.5), x.data(), y.data(), n);
    for (Index i = 0; i < n; ++i) CHECK(y[i] == Approx(double(y0[i]) + 0.5 * double(x[i])).epsilon(4 * test::eps<TestType>()).margin(4 * test::eps<TestType>()));
    auto s = x;
    simd::scale(TestType(-3), s.data(), n);
    for (Index i = 0; i < n; ++i) CHECK(s[i] == TestType(-3) * x[i]);
    std::vector<TestType> out(static_cast<std::size_t>(n));
    simd::add(x.data(), y0.data(), out.data(), n);
    for (Index i = 0; i < n; ++i) CHECK(out[i] == x[i] + y0[i]);
    simd::mul(x.data(), y0.data(), out.data(), n);
    for (Index i = 0; i < n; ++i) CHECK(out[i] == x[i] * y0[i]);
  }
}

TEMPLATE_TEST_CASE("reduce shims and exp", "[simd]", float, double) {
  using B = simd::batch<TestType>;
  alignas(64) TestType lanes[B::size];
  for (std::size_t i = 0; i < B::size; ++i) lanes[i] = TestType(i % 3 == 0 ? -1.0 * double(i) : double(i) * 0.5);
  const B b = B::load_aligned(lanes);
  double sum = 0, mx = -INFINITY;
  for (auto v : lanes) sum += v, mx = std::max<double>(mx, v);
  CHECK(simd::reduce_add(b) == Approx(sum));
  CHECK(simd::reduce_max(b) == TestType(mx));
  // exp: relative error over the float range, and the limits softmax relies on.
  double worst = 0;
  for (double x = -80; x <= 80; x += 0.37) {
    const TestType xt = TestType(x);
    const double want = std::exp(double(xt));
    worst = std::max(worst, std::abs(double(simd::exp(B(xt)).get(0)) - want) / want);
  }
  CHECK(worst < 8 * test::eps<TestType>());
  CHECK(simd::exp(B(-std::numeric_limits<TestType>::infinity())).get(0) == TestType(0));
  CHECK(simd::exp(B(TestType(-1000))).get(0) == TestType(0));
  CHECK(simd::exp(B(TestType(0))).get(0) == TestType(1));
}

TEMPLATE_TEST_CASE("exp equals xsimd's wherever the result is a normal number, and keeps its limits", "[simd]", float,
                   double) {
  // simd::exp has its own AVX-512 float path (scalef instead of ldexp and selects); it must give
  // xsimd::exp's bits wherever exp(x) is a normal number, and the IEEE limits elsewhere.
  using B = simd::batch<TestType>;
  constexpr TestType inf = std::numeric_limits<TestType>::infinity();
  Index compared = 0, differ = 0;
  for (double x = -87.0; x <= 88.0; x += 0.0137, ++compared) {
    const B b(static_cast<TestType>(x));
    if (simd::exp(b).get(0) != xsimd::exp(b).get(0)) ++differ;
  }
  CHECK(compared > 10000);
  CHECK(differ == 0);
  CHECK(simd::exp(B(inf)).get(0) == inf);
  CHECK(simd::exp(B(TestType(1000))).get(0) == inf);
  CHECK(std::isnan(simd::exp(B(std::numeric_limits<TestType>::quiet_NaN())).get(0)));
  if constexpr (std::is_same_v<TestType, float>) CHECK(simd::exp(B(TestType(-104))).get(0) == TestType(0));
  // The deep underflow range: 0 or a denormal, never negative or NaN, and monotone.
  TestType last = 0;
  for (double x = -104; x <= -80; x += 0.25) {
    const TestType e = simd::exp(B(static_cast<TestType>(x))).get(0);
    CHECK(e >= last);
    last = e;
  }
}

TEMPLATE_TEST_CASE("map handles the tail through the same vector code", "[simd]", float, double) {
  for (Index n : test::kAwkwardSizes) {
    auto x = random_vector<TestType>(n, 50 + n);
    std::vector<TestType> out(static_cast<std::size_t>(n));
    simd::map(x.data(), out.data(), n, [](auto v) { return v * v + v; });
    for (Index i = 0; i < n; ++i) CHECK(out[i] == x[i] * x[i] + x[i]);
  }
}

TEST_CASE("xsimd 8.1 haddp permutes lanes on AVX-512: engram must not use it", "[simd][xsimd-bug]") {
  // Pins a known defect so that an xsimd upgrade that fixes it is noticed (and haddp can return).
  using B = simd::batch<float>;
  alignas(64) B rows[B::size];
  for (std::size_t i = 0; i < B::size; ++i) rows[i] = B(float(i));
  alignas(64) float out[B::size];
  xsimd::haddp(rows).store_aligned(out);
  bool in_order = true;
  for (std::size_t i = 0; i < B::size; ++i) in_order = in_order && out[i] == float(i * B::size);
  if (B::size == 16 && XSIMD_VERSION_MAJOR == 8) CHECK_FALSE(in_order);
  else CHECK(in_order);
}
