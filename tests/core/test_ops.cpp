// Row-wise ops against double references: softmax (masked, causal), norms, activations, RoPE.
#include <cmath>
#include <numbers>

#include "engram/core/ops.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {
template <class T, class F>
void check_rowwise(Index rows, Index cols, double scale, F&& reference, const std::function<void(View<T>)>& op,
                   double tol_ulps, const char* what) {
  auto x = test::random_tensor<T>({rows, cols}, std::uint64_t(rows * 1000 + cols), scale);
  test::Mat ref(rows, cols);
  for (Index r = 0; r < rows; ++r) {
    std::vector<double> in(x.row(r), x.row(r) + cols), out(static_cast<std::size_t>(cols));
    reference(in, out);
    for (Index c = 0; c < cols; ++c) ref(r, c) = out[std::size_t(c)];
  }
  op(x.view());
  test::require_close<T>(x.view(), ref, tol_ulps * test::eps<T>() * std::max(1.0, test::max_abs(ref)), what);
}
}  // namespace

TEMPLATE_TEST_CASE("softmax rows sum to one and match the reference", "[ops]", float, double) {
  for (Index cols : test::kAwkwardSizes)
    check_rowwise<TestType>(3, cols, 4.0,
        [](const auto& in, auto& out) {
          double m = -INFINITY, s = 0;
          for (double v : in) m = std::max(m, v);
          for (std::size_t i = 0; i < in.size(); ++i) s += out[i] = std::exp(in[i] - m);
          for (double& v : out) v /= s;
        },
        [](View<TestType> v) { softmax_rows(v); }, 64, "softmax");
}

TEST_CASE("masked and causal softmax zero the masked entries and never give NaN", "[ops]") {
  Tensor<float> x({4, 6});
  x.fill(1.f);
  softmax_rows_causal(x.view(), 1);  // row r sees r + 2 columns
  for (Index r = 0; r < 4; ++r)
    for (Index c = 0; c < 6; ++c) CHECK(x(r, c) == Approx(c < r + 2 ? 1.0 / double(r + 2) : 0.0));
  Tensor<float> y({2, 3});
  y.fill(2.f);
  Tensor<std::uint8_t> mask({2, 3});
  mask(0, 1) = 1;  // row 1 fully masked
  softmax_rows_masked(y.view(), mask.view());
  CHECK(y(0, 1) == 1.f);
  CHECK(y(0, 0) == 0.f);
  CHECK(y(1, 0) == 0.f);
  CHECK(y(1, 2) == 0.f);
  // Extreme logits: no overflow.
  Tensor<float> z({1, 3});
  z(0, 0) = 1e30f, z(0, 1) = -1e30f, z(0, 2) = 1e30f;
  softmax_rows(z.view());
  CHECK(z(0, 0) == 0.5f);
  CHECK(z(0, 1) == 0.f);
}

TEMPLATE_TEST_CASE("layer_norm and rms_norm", "[ops]", float, double) {
  for (Index cols : test::kAwkwardSizes) {
    auto gamma = test::random_tensor<TestType>({cols}, 5), beta = test::random_tensor<TestType>({cols}, 6);
    const double eps = 1e-5;
    check_rowwise<TestType>(5, cols, 3.0,
        [&](const auto& in, auto& out) {
          double mean = 0, var = 0;
          for (double v : in) mean += v;
          mean /= double(in.size());
          for (double v : in) var += (v - mean) * (v - mean);
          var /= double(in.size());
          for (std::size_t i = 0; i < in.size(); ++i)
            out[i] = (in[i] - mean) / std::sqrt(var + eps) * double(gamma[Index(i)]) + double(beta[Index(i)]);
        },
        [&](View<TestType> v) { layer_norm<TestType>(v, gamma.data(), beta.data(), TestType(eps), v); }, 64, "layer_norm");
    check_rowwise<TestType>(5, cols, 3.0,
        [&](const auto& in, auto& out) {
          double ms = 0;
          for (double v : in) ms += v * v;
          ms /= double(in.size());
          for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i] / std::sqrt(ms + eps) * double(gamma[Index(i)]);
        },
        [&](View<TestType> v) { rms_norm<TestType>(v, gamma.data(), TestType(eps), v); }, 64, "rms_norm");
  }
  Tensor<TestType> a({2, 3}), b({3, 2});
  CHECK_THROWS_AS(layer_norm<TestType>(a.view(), nullptr, nullptr, TestType(1e-5), b.view()), Error);
}

TEMPLATE_TEST_CASE("activations match their definitions", "[ops]", float, double) {
  const double c = std::sqrt(2.0 / std::numbers::pi);
  auto gelu_t = [c](double x) { return 0.5 * x * (1 + std::tanh(c * (x + 0.044715 * x * x * x))); };
  for (Index cols : {Index(1), Index(17), Index(100)}) {
    check_rowwise<TestType>(2, cols, 3.0, [&](const auto& in, auto& out) { for (std::size_t i = 0; i < in.size(); ++i) out[i] = gelu_t(in[i]); },
        [](View<TestType> v) { gelu_tanh(v); }, 16, "gelu_tanh");
    check_rowwise<TestType>(2, cols, 3.0, [](const auto& in, auto& out) { for (std::size_t i = 0; i < in.size(); ++i) out[i] = 0.5 * in[i] * (1 + std::erf(in[i] / std::sqrt(2.0))); },
        [](View<TestType> v) { gelu_erf(v); }, 16, "gelu_erf");
    check_rowwise<TestType>(2, cols, 3.0, [](const auto& in, auto& out) { for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i] / (1 + std::exp(-in[i])); },
        [](View<TestType> v) { silu(v); }, 16, "silu");
    check_rowwise<TestType>(2, cols, 3.0, [](const auto& in, auto& out) { for (std::size_t i = 0; i < in.size(); ++i) out[i] = 1 / (1 + std::exp(-in[i])); },
        [](View<TestType> v) { sigmoid(v); }, 16, "sigmoid");
    // The derivative against a central finite difference of the double definition.
    check_rowwise<TestType>(2, cols, 3.0, [&](const auto& in, auto& out) {
          for (std::size_t i = 0; i < in.size(); ++i) out[i] = (gelu_t(in[i] + 1e-5) - gelu_t(in[i] - 1e-5)) / 2e-5;
        },
        [](View<TestType> v) { gelu_tanh_derivative(v); }, std::is_same_v<TestType, float> ? 16 : 1e7, "gelu_tanh_derivative");
  }
}

TEST_CASE("RoPE frequencies for every scaling kind", "[ops][rope]") {
  const auto plain = rope_inv_freq(8, 10000.0);
  REQUIRE(plain.size() == 4);
  CHECK(plain[0] == 1.0);
  CHECK(plain[1] == Approx(std::pow(10000.0, -0.25)));
  RopeScaling lin{RopeScaling::Kind::linear, 4.0};
  CHECK(rope_inv_freq(8, 10000.0, lin)[2] == Approx(plain[2] / 4));
  RopeScaling ntk{RopeScaling::Kind::ntk, 4.0, 2.0};
  // base' = 10000 * (2 * 4 - 1)^(8/6)
  CHECK(rope_inv_freq(8, 10000.0, ntk)[1] == Approx(std::pow(10000.0 * std::pow(7.0, 8.0 / 6.0), -0.25)));
  CHECK_THROWS_AS(rope_inv_freq(7, 10000.0), Error);
  CHECK_THROWS_AS(rope_inv_freq(8, -1.0), Error);
}

TEMPLATE_TEST_CASE("RoPE rotates pairs by position * frequency in both pairings", "[ops][rope]", float, double) {
  const Index heads = 3, d = 8, rows = 5;
  const auto inv = rope_inv_freq(d, 10000.0);
  const std::vector<std::int64_t> pos = {0, 1, 17, 1000, 123456};
  const auto table = make_rope_table<TestType>(inv, pos);
  for (RopePairing pairing : {RopePairing::rotate_half, RopePairing::interleaved}) {
    auto x = test::random_tensor<TestType>({rows, heads * d}, 9);
    test::Mat ref(rows, heads * d);
    for (Index r = 0; r < rows; ++r)
      for (Index h = 0; h < heads; ++h)
        for (Index i = 0; i < d / 2; ++i) {
          const Index a = pairing == RopePairing::rotate_half ? i : 2 * i;
          const Index b = pairing == RopePairing::rotate_half ? i + d / 2 : 2 * i + 1;
          const double ang = double(pos[std::size_t(r)]) * inv[std::size_t(i)];
          const double xa = x(r, h * d + a), xb = x(r, h * d + b);
          ref(r, h * d + a) = xa * std::cos(ang) - xb * std::sin(ang);
          ref(r, h * d + b) = xb * std::cos(ang) + xa * std::sin(ang);
        }
    apply_rope<TestType>(x.view(), heads, d, table, pairing);
    test::require_close<TestType>(x.view(), ref, 16 * test::eps<TestType>() * 4, "rope");
  }
  Tensor<TestType> wrong({rows, heads * d + 1});
  CHECK_THROWS_AS(apply_rope<TestType>(wrong.view(), heads, d, table, RopePairing::rotate_half), Error);
}
