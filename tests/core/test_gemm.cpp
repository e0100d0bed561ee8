// gemm on views against a double triple loop: every transpose, accumulate, strided views, batches.
#include "engram/core/gemm.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {
// Reference C = alpha * op(A) op(B) + beta * C0 and the bound sum |alpha a b| + |beta c| per entry.
struct GemmRef {
  test::Mat c, bound;
};
template <class T>
GemmRef reference(ConstView<T> a, Trans ta, ConstView<T> b, Trans tb, ConstView<T> c0, double alpha, double beta) {
  const Index m = ta == Trans::no ? a.rows() : a.cols(), k = ta == Trans::no ? a.cols() : a.rows();
  const Index n = tb == Trans::no ? b.cols() : b.rows();
  GemmRef r{test::Mat(m, n), test::Mat(m, n)};
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      double s = 0, bound = 0;
      for (Index l = 0; l < k; ++l) {
        const double x = double(ta == Trans::no ? a(i, l) : a(l, i)) * double(tb == Trans::no ? b(l, j) : b(j, l));
        s += x;
        bound += std::abs(x);
      }
      const double c = beta == 0 ? 0.0 : beta * double(c0(i, j));
      r.c(i, j) = alpha * s + c;
      r.bound(i, j) = std::abs(alpha) * bound + std::abs(c);
    }
  return r;
}

template <class T>
void check_gemm(Index m, Index n, Index k, Trans ta, Trans tb, double alpha, double beta, std::uint64_t seed) {
  auto a = ta == Trans::no ? test::random_tensor<T>({m, k}, seed) : test::random_tensor<T>({k, m}, seed);
  auto b = tb == Trans::no ? test::random_tensor<T>({k, n}, seed + 1) : test::random_tensor<T>({n, k}, seed + 1);
  auto c = test::random_tensor<T>({m, n}, seed + 2);
  const auto ref = reference<T>(a.view(), ta, b.view(), tb, c.view(), alpha, beta);
  gemm<T>(a.view(), ta, b.view(), tb, c.view(), T(alpha), T(beta));
  // Each entry is a k-term sum: the rounding error is bounded by ~k eps times the sum of |terms|.
  double worst_ratio = 0;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      const double err = std::abs(double(c(i, j)) - ref.c(i, j));
      worst_ratio = std::max(worst_ratio, err / ((k + 2) * test::eps<T>() * ref.bound(i, j) + 1e-300));
    }
  INFO("m=" << m << " n=" << n << " k=" << k << " ta=" << int(ta) << " tb=" << int(tb));
  CHECK(worst_ratio <= 1.0);
}
}  // namespace

TEMPLATE_TEST_CASE("gemm matches the reference for every transpose and awkward sizes", "[gemm]", float, double) {
  const std::vector<Index> sizes = {1, 7, 16, 17, 63, 129};
  std::uint64_t seed = 100;
  for (Trans ta : {Trans::no, Trans::yes})
    for (Trans tb : {Trans::no, Trans::yes})
      for (Index m : sizes)
        for (Index k : {Index(1), Index(17), Index(64)}) {
          const Index n = sizes[std::size_t(seed % sizes.size())];
          check_gemm<TestType>(m, n, k, ta, tb, 1.0, 0.0, ++seed);
        }
}

TEMPLATE_TEST_CASE("gemm accumulates with alpha and beta", "[gemm]", float, double) {
  check_gemm<TestType>(33, 19, 40, Trans::no, Trans::yes, 1.0, 1.0, 7);
  check_gemm<TestType>(33, 19, 40, Trans::yes, Trans::no, -0.5, 2.0, 8);
  check_gemm<TestType>(5, 6, 0, Trans::no, Trans::no, 1.0, 0.5, 9);  // empty inner dimension
}

TEST_CASE("gemm with beta = 0 ignores NaN in C and works on strided views", "[gemm]") {
  auto a = test::random_tensor<float>({8, 12}, 1), b = test::random_tensor<float>({12, 20}, 2);
  Tensor<float> c({8, 20});
  c.fill(std::numeric_limits<float>::quiet_NaN());
  matmul<float>(a.view(), b.view(), c.view());
  const auto ref = reference<float>(a.view(), Trans::no, b.view(), Trans::no, c.view(), 1.0, 0.0);
  test::require_close<float>(c.view(), ref.c, 1e-4, "beta=0");
  // Column blocks of wider tensors (as per-head slices are).
  auto wide = test::random_tensor<float>({8, 40}, 3);
  Tensor<float> out({8, 30});
  auto a_blk = wide.view().middle_cols(5, 12);
  auto c_blk = out.view().middle_cols(7, 20);
  matmul<float>(a_blk, b.view(), c_blk);
  const auto ref2 = reference<float>(a_blk, Trans::no, b.view(), Trans::no, c_blk, 1.0, 0.0);
  test::require_close<float>(c_blk, ref2.c, 1e-4, "strided");
  CHECK(out(3, 0) == 0.f);  // outside the block untouched
}

TEST_CASE("gemm rejects mismatched shapes", "[gemm][errors]") {
  Tensor<float> a({4, 5}), b({6, 7}), c({4, 7});
  CHECK_THROWS_AS(matmul<float>(a.view(), b.view(), c.view()), Error);
  Tensor<float> b2({5, 7}), c2({4, 6});
  CHECK_THROWS_AS(matmul<float>(a.view(), b2.view(), c2.view()), Error);
  CHECK_NOTHROW(matmul<float>(a.view(), b2.view(), c.view()));
}

TEST_CASE("gemm_batched runs independent products", "[gemm]") {
  std::vector<Tensor<double>> as, bs, cs;
  std::vector<ConstView<double>> av, bv;
  std::vector<View<double>> cv;
  for (int h = 0; h < 5; ++h) {
    as.push_back(test::random_tensor<double>({9, 8}, 10 + h));
    bs.push_back(test::random_tensor<double>({11, 8}, 20 + h));
    cs.emplace_back(Shape{9, 11});
  }
  for (int h = 0; h < 5; ++h) av.push_back(as[h].view()), bv.push_back(bs[h].view()), cv.push_back(cs[h].view());
  gemm_batched<double>(av, Trans::no, bv, Trans::yes, cv);
  for (int h = 0; h < 5; ++h) {
    const auto ref = reference<double>(av[h], Trans::no, bv[h], Trans::yes, cv[h], 1.0, 0.0);
    test::require_close<double>(cs[h].view(), ref.c, 1e-12, "batched");
  }
  cv.pop_back();
  CHECK_THROWS_AS(gemm_batched<double>(av, Trans::no, bv, Trans::yes, cv), Error);
}
