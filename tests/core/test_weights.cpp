// engram's own float kernels against slow, obvious references: the packed sgemm (core/gemm_kernel.hpp)
// on shapes that cross its cache blocks, the few-row weight products (core/weight_gemm.hpp) in every
// weight format against the scalar decoder, quantisation error bounds, and the half/bf16 conversions.
#include <cmath>
#include <cstring>

#include "engram/core/activation_quant.hpp"
#include "engram/core/gemm.hpp"
#include "engram/core/weights.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

// C = alpha op(A) op(B) + beta C0 in double, and the error bound k eps sum|terms| per entry.
void check_against_double(ConstView<float> a, bool ta, ConstView<float> b, bool tb, ConstView<float> c0, ConstView<float> c, float alpha,
                          float beta, const std::string& what) {
  const Index m = c.rows(), n = c.cols(), k = ta ? a.rows() : a.cols();
  double worst = 0;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      double s = 0, bound = 0;
      for (Index l = 0; l < k; ++l) {
        const double x = double(ta ? a(l, i) : a(i, l)) * double(tb ? b(j, l) : b(l, j));
        s += x, bound += std::abs(x);
      }
      const double want = double(alpha) * s + (beta == 0 ? 0.0 : double(beta) * double(c0(i, j)));
      const double tol = (k + 2) * 6e-8 * (std::abs(alpha) * bound + std::abs(beta * c0(i, j))) + 1e-30;
      worst = std::max(worst, std::abs(double(c(i, j)) - want) / tol);
    }
  INFO(what << ": worst error / bound " << worst);
  CHECK(worst <= 1.0);
}

}  // namespace

TEST_CASE("packed sgemm matches double on shapes that cross its cache blocks", "[gemm][sgemm]") {
  // kKc = 256 (inner), kNc = 512 (columns), kMc ~ 1000 (rows): sizes past each, with ragged edges
  // that are not multiples of the register tile (14 x 32 with AVX-512, 6 x 16 with AVX2).
  struct Case {
    Index m, n, k;
  };
  std::uint64_t seed = 900;
  for (const Case& s : {Case{33, 47, 300}, Case{129, 530, 64}, Case{1031, 40, 70}, Case{70, 70, 513}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        auto a = ta ? test::random_tensor<float>({s.k, s.m}, ++seed) : test::random_tensor<float>({s.m, s.k}, ++seed);
        auto b = tb ? test::random_tensor<float>({s.n, s.k}, ++seed) : test::random_tensor<float>({s.k, s.n}, ++seed);
        auto c0 = test::random_tensor<float>({s.m, s.n}, ++seed);
        Tensor<float> c = c0.copy();
        const float alpha = 0.75f, beta = ta ? 0.5f : 0.0f;
        sgemm::gemm(a.view(), ta, b.view(), tb, c.view(), alpha, beta);
        check_against_double(a.view(), ta, b.view(), tb, c0.view(), c.view(), alpha, beta,
                             "m " + std::to_string(s.m) + " n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " ta " +
                                 std::to_string(ta) + " tb " + std::to_string(tb));
      }
}

TEST_CASE("gemm's float paths give the same bits on one thread and on two", "[gemm][sgemm]") {
  auto a = test::random_tensor<float>({300, 260}, 1), b = test::random_tensor<float>({520, 260}, 2);
  Tensor<float> one({300, 520}), two({300, 520}), few1({3, 520}), few2({3, 520});
  {
    test::ThreadCount t(1);
    gemm<float>(a.view(), Trans::no, b.view(), Trans::yes, one.view());
    gemm<float>(a.view().block(0, 3, 0, 260), Trans::no, b.view(), Trans::yes, few1.view());
  }
  {
    test::ThreadCount t(2);
    gemm<float>(a.view(), Trans::no, b.view(), Trans::yes, two.view());
    gemm<float>(a.view().block(0, 3, 0, 260), Trans::no, b.view(), Trans::yes, few2.view());
  }
  CHECK(std::memcmp(one.data(), two.data(), sizeof(float) * std::size_t(one.numel())) == 0);
  CHECK(std::memcmp(few1.data(), few2.data(), sizeof(float) * std::size_t(few1.numel())) == 0);
}

TEST_CASE("gemm refuses an output that shares memory with an input", "[gemm][errors]") {
  Tensor<float> a({64, 64});
  a.fill(1.0f);
  CHECK_THROWS_AS(gemm<float>(a.view(), Trans::no, a.view(), Trans::no, a.view()), Error);
  // Side-by-side column blocks of one tensor do not overlap and are allowed.
  Tensor<float> wide({64, 192});
  wide.fill(0.5f);
  CHECK_NOTHROW(gemm<float>(wide.view().middle_cols(0, 64), Trans::no, wide.view().middle_cols(64, 64), Trans::no,
                            wide.view().middle_cols(128, 64)));
  CHECK(wide(3, 130) == Approx(16.0f));
  CHECK_THROWS_AS(gemm<float>(wide.view().middle_cols(0, 64), Trans::no, wide.view().middle_cols(64, 64), Trans::no,
                              wide.view().middle_cols(32, 64)),
                  Error);
}

TEST_CASE("weight products in every format equal products with the decoded weights", "[gemm][weights]") {
  // W [n, k] with k not a multiple of the 32-weight block (100: 4 blocks, 70: 3, an odd count the
  // AVX-512 kernel's two-block steps end on); x rows 1 (decode), 5 and 40 (prefill path). q8/q4
  // products are W x Q8(x): the reference multiplies the decoded weights by x's int8 round trip.
  const Index n = 70;
  for (Index k : {Index(100), Index(70)})
  for (WeightFormat f : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::f16, WeightFormat::q8, WeightFormat::q4}) {
    auto w = test::random_tensor<float>({n, k}, 11 + k);
    CompressedMatrix stored;
    Tensor<float> decoded;
    WeightView view;
    if (f == WeightFormat::f32) {
      view = WeightView::of(w.view());
      decoded = w.copy();
    } else {
      stored = CompressedMatrix::quantize(w.view(), f, "w");
      view = stored.view();
      decoded = stored.dequantize();
      // The scalar decoder (decode_weight) is the reference the row decoder must equal.
      for (Index r = 0; r < n; r += 13)
        for (Index c = 0; c < k; ++c) REQUIRE(decoded(r, c) == decode_weight(f, view.row(r), c));
    }
    for (Index m : {Index(1), Index(5), Index(40)}) {
      auto x = test::random_tensor<float>({m, k}, 20 + m);
      auto y0 = test::random_tensor<float>({m, n}, 30 + m);
      Tensor<float> y = y0.copy();
      matmul_nt(x.view(), view, y.view(), 1.5f, 0.25f);
      Tensor<float> xq = x.copy();
      if (f == WeightFormat::q8 || f == WeightFormat::q4)
        for (Index i = 0; i < m; ++i) act_quant::round_trip(xq.row(i), k);
      check_against_double(xq.view(), false, decoded.view(), true, y0.view(), y.view(), 1.5f, 0.25f,
                           std::string(format_name(f)) + " k " + std::to_string(k) + " m " + std::to_string(m));
    }
  }
}

TEST_CASE("the SIMD activation quantiser equals the scalar rule bit for bit", "[weights]") {
  // Rows of whole blocks and partial ones; blocks with halfway values (x / d = n + 0.5 exactly,
  // where rounding must go to even), NaN, infinity, denormal-sized values and zeros.
  for (Index k : {Index(32), Index(64), Index(96), Index(100), Index(256)}) {
    auto x = test::random_tensor<float>({1, k}, 40 + k);
    for (Index i = 0; i < 32; ++i) x(0, i) = float(i % 8) - 3.5f;  // amax 3.5 -> d = 3.5/127: q = +-127, ties between
    // amax 63.5: 1 / d = 2 exactly, so 2.25, -0.25, 1.75 land on the halves 4.5, -0.5, 3.5.
    x(0, 0) = 63.5f, x(0, 1) = 2.25f, x(0, 2) = -0.25f, x(0, 3) = 1.75f;
    if (k >= 64) x(0, 40) = NAN;
    if (k == 96 || k == 100) x(0, 70) = -INFINITY;
    if (k == 256)
      for (Index i = 64; i < 96; ++i) x(0, i) = 1e-38f;  // below 4e-37: a zero block
    if (k == 256)
      for (Index i = 128; i < 160; ++i) x(0, i) = 0.0f;
    const Index blocks = act_quant::padded_blocks(k);
    for (int off : {0, 8, 128}) {
      std::vector<std::int8_t> q0(std::size_t(blocks * kQuantBlock)), q1(q0.size());
      std::vector<float> d0(std::size_t(blocks * act_quant::kLanes)), d1(d0.size());
      std::vector<std::int32_t> b0(d0.size()), b1(d0.size());
      act_quant::quantise(x.row(0), k, off, q0.data(), d0.data(), b0.data(), false);
      act_quant::quantise(x.row(0), k, off, q1.data(), d1.data(), b1.data(), true);
      INFO("k " << k << " offset " << off);
      CHECK(q0 == q1);
      CHECK((q1[1] == 4 && q1[2] == 0 && q1[3] == 4));  // halves round to even
      CHECK(b0 == b1);
      for (std::size_t i = 0; i < d0.size(); ++i) CHECK((std::isnan(d0[i]) ? std::isnan(d1[i]) : d0[i] == d1[i]));
      if (k >= 64) CHECK(std::isnan(d1[act_quant::kLanes]));  // block 1 holds the NaN
    }
  }
}

TEST_CASE("activations quantise to int8 blocks within half a step, with the bias the kernels need", "[weights]") {
  // 70 values: two whole blocks and a partial one, then a pair's padding block of zeros.
  auto x = test::random_tensor<float>({1, 70}, 3);
  x(0, 5) = 9.0f;                                     // an outlier sets block 0's scale
  for (Index c = 32; c < 64; ++c) x(0, c) = 0.0f;     // a block of zeros: scale 0, no division
  const Index blocks = act_quant::padded_blocks(70);
  REQUIRE(blocks == 4);
  std::vector<std::int8_t> q(std::size_t(blocks * kQuantBlock));
  std::vector<float> d(std::size_t(blocks * act_quant::kLanes));
  std::vector<std::int32_t> bias(d.size());
  act_quant::quantise(x.row(0), 70, 8, q.data(), d.data(), bias.data());
  CHECK(d[0] == Approx(9.0f / 127.0f));
  CHECK(q[5] == 127);
  CHECK(d[act_quant::kLanes] == 0.0f);
  CHECK(d[3 * act_quant::kLanes] == 0.0f);  // the padding block
  for (Index b = 0; b < blocks; ++b) {
    std::int32_t sum = 0;
    for (Index i = 0; i < kQuantBlock; ++i) {
      const Index c = b * kQuantBlock + i;
      sum += q[std::size_t(c)];
      const float scale = d[std::size_t(b * act_quant::kLanes)];
      const float value = c < 70 ? x(0, c) : 0.0f;
      CHECK(std::abs(double(value) - double(scale) * q[std::size_t(c)]) <= 0.5 * double(scale) * (1 + 1e-6) + 1e-30);
      CHECK(std::abs(q[std::size_t(c)]) <= 127);
    }
    CHECK(bias[std::size_t(b * act_quant::kLanes)] == -8 * sum);
    for (Index l = 1; l < act_quant::kLanes; ++l) CHECK(bias[std::size_t(b * act_quant::kLanes + l)] == 0);
  }
  // round_trip is the same quantisation, in place.
  Tensor<float> rt = x.copy();
  act_quant::round_trip(rt.row(0), 70);
  for (Index c = 0; c < 70; ++c) CHECK(rt(0, c) == d[std::size_t(c / kQuantBlock * act_quant::kLanes)] * float(q[std::size_t(c)]));
}

TEST_CASE("q8/q4 products keep NaN and zeros as fp32 products do, and prefill equals decode", "[gemm][weights]") {
  const Index n = 24, k = 96;
  auto w = test::random_tensor<float>({n, k}, 12);
  for (WeightFormat f : {WeightFormat::q8, WeightFormat::q4}) {
    INFO(format_name(f));
    const CompressedMatrix stored = CompressedMatrix::quantize(w.view(), f, "w");
    // A NaN or an infinity in x poisons its row (never a wrapped integer), zeros give zeros.
    Tensor<float> x({3, k}), y({3, n});
    x.fill(0.0f);
    x(0, 40) = NAN;
    x(1, 7) = INFINITY;
    for (Index m : {Index(1), Index(3)}) {
      matmul_nt(x.view().block(0, m, 0, k), stored.view(), y.view().block(0, m, 0, n));
      for (Index j = 0; j < n; ++j) CHECK(std::isnan(y(0, j)));
      for (Index i = 1; i < m; ++i)
        for (Index j = 0; j < n; ++j) CHECK((i == 1 ? std::isnan(y(i, j)) : y(i, j) == 0.0f));
    }
    // 40 rows through the packed kernel against the same rows one at a time through the int8 kernel
    // (the same W x Q8(x), summed in another order: 96 terms of up to 1 in size, so a margin of 2e-5
    // is a few float roundings of their sum).
    auto xs = test::random_tensor<float>({40, k}, 13);
    Tensor<float> many({40, n}), one({1, n});
    matmul_nt(xs.view(), stored.view(), many.view());
    for (Index i = 0; i < 40; ++i) {
      matmul_nt(xs.view().block(i, 1, 0, k), stored.view(), one.view());
      for (Index j = 0; j < n; ++j) CHECK(one(0, j) == Approx(many(i, j)).epsilon(1e-5).margin(2e-5));
    }
  }
}

TEST_CASE("quantised weights stay within their format's error bound", "[weights]") {
  auto w = test::random_tensor<float>({16, 96}, 5);
  w(3, 7) = 0.0f, w(4, 0) = 40.0f;  // a zero and an outlier in their blocks
  for (WeightFormat f : {WeightFormat::bf16, WeightFormat::f16, WeightFormat::q8, WeightFormat::q4}) {
    const Tensor<float> d = CompressedMatrix::quantize(w.view(), f).dequantize();
    for (Index r = 0; r < w.rows(); ++r)
      for (Index b = 0; b < w.cols(); b += kQuantBlock) {
        float amax = 0;
        for (Index c = b; c < b + kQuantBlock; ++c) amax = std::max(amax, std::abs(w(r, c)));
        for (Index c = b; c < b + kQuantBlock; ++c) {
          const double err = std::abs(double(d(r, c)) - double(w(r, c)));
          // bf16: 8 bits of mantissa, f16: 11, q8: half a step of amax/127 (plus the f16 scale's
          // rounding), q4: a step of amax/8 at most.
          const double bound = f == WeightFormat::bf16 ? std::abs(w(r, c)) * 0x1p-8
                               : f == WeightFormat::f16 ? std::abs(w(r, c)) * 0x1p-11 + 6e-8
                               : f == WeightFormat::q8  ? amax / 127.0 * (0.5 + 127 * 0x1p-11)
                                                        : amax / 8.0 * (1.0 + 8 * 0x1p-11);
          INFO(format_name(f) << " [" << r << ", " << c << "] " << w(r, c) << " -> " << d(r, c));
          REQUIRE(err <= bound);
        }
      }
    CHECK(d(3, 7) == 0.0f);
  }
  Tensor<float> bad({2, 32});
  bad.fill(1.0f);
  bad(1, 5) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(CompressedMatrix::quantize(bad.view(), WeightFormat::q8), Error);
  bad(1, 5) = 1e6f;  // beyond f16's 65504
  CHECK_THROWS_AS(CompressedMatrix::quantize(bad.view(), WeightFormat::f16), Error);
  CHECK_THROWS_AS(CompressedMatrix::quantize(bad.view(), WeightFormat::f32), Error);
}

TEST_CASE("half and bfloat16 conversions round to nearest even and keep special values", "[weights]") {
  // Every half value converts to float and back unchanged (NaNs stay NaN).
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = half_to_float(std::uint16_t(h));
    if (std::isnan(f)) REQUIRE(std::isnan(half_to_float(float_to_half(f))));
    else REQUIRE(float_to_half(f) == std::uint16_t(h));
  }
  CHECK(float_to_half(1.0f + 0x1p-11f) == float_to_half(1.0f));  // a tie rounds to the even mantissa
  CHECK(float_to_half(1e6f) == 0x7C00u);                         // overflow to infinity
  CHECK(half_to_float(0x0001u) == 0x1p-24f);                     // the smallest subnormal
  CHECK(bf16_to_float(float_to_bf16(3.140625f)) == 3.140625f);
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == float_to_bf16(1.0f));  // tie to even
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}
