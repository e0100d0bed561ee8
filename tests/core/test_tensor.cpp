// Tensor and MatrixView: layout, padding, alignment, explicit copies, bounds and shape errors.
#include <cstdint>

#include "engram/core/tensor.hpp"
#include "test_util.hpp"

using namespace engram;

TEMPLATE_TEST_CASE("Tensor rows are aligned and padded to the SIMD unit", "[tensor]", float, double) {
  for (Index cols : test::kAwkwardSizes) {
    Tensor<TestType> t({3, cols});
    CHECK(t.stride() % kPadElems<TestType> == 0);
    CHECK(t.stride() >= cols);
    CHECK(t.stride() < cols + kPadElems<TestType>);
    for (Index r = 0; r < 3; ++r) CHECK(reinterpret_cast<std::uintptr_t>(t.row(r)) % kAlignment == 0);
    CHECK(t.view().is_padded());
    CHECK(t.bytes() == sizeof(TestType) * std::size_t(3 * t.stride()));
    for (Index c = 0; c < t.stride(); ++c) CHECK(t.row(2)[c] == TestType(0));
  }
}

TEST_CASE("Tensor shapes of rank 0 to 4", "[tensor]") {
  Tensor<float> scalar(Shape{});
  CHECK(scalar.numel() == 1);
  Tensor<float> t({2, 3, 5, 7});
  CHECK(t.rank() == 4);
  CHECK(t.rows() == 30);
  CHECK(t.cols() == 7);
  CHECK(t.numel() == 210);
  CHECK_THROWS_AS(Tensor<float>({1, 2, 3, 4, 5}), Error);
  CHECK_THROWS_AS(Tensor<float>({2, -1}), Error);
  Tensor<float> empty({0, 5});
  CHECK(empty.empty());
  CHECK(empty.view().rows() == 0);
}

TEST_CASE("Tensor::mat selects one matrix of a rank-3 tensor", "[tensor]") {
  Tensor<float> t({3, 4, 5});
  for (Index h = 0; h < 3; ++h)
    for (Index r = 0; r < 4; ++r)
      for (Index c = 0; c < 5; ++c) t.mat(h)(r, c) = float(100 * h + 10 * r + c);
  CHECK(t.view()(9, 2) == 212.f);  // head 2, row 1
  CHECK(t.mat(1)(3, 4) == 134.f);
  CHECK_THROWS_AS(t.mat(3), Error);
  Tensor<float> m({4, 5});
  CHECK_THROWS_AS(m.mat(0), Error);
}

TEST_CASE("lazily zeroed tensors read as zeros, hold what is written, and move and copy like any", "[tensor]") {
  // 600 x 600 floats (1.4 MiB: an anonymous mapping) and 10 x 10 (the heap).
  for (Index n : {Index(600), Index(10)}) {
    Tensor<float> t = Tensor<float>::lazily_zeroed({n, n});
    CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % kAlignment == 0);
    bool zeros = true;
    for (Index r = 0; r < n; ++r)
      for (Index c = 0; c < t.stride(); ++c) zeros = zeros && t.row(r)[c] == 0.0f;  // padding included
    CHECK(zeros);
    t(n - 1, n - 1) = 3.0f;
    Tensor<float> moved = std::move(t);
    CHECK(moved(n - 1, n - 1) == 3.0f);
    const Tensor<float> copy = moved.copy();
    moved = Tensor<float>({2, 2});  // the mapping is released here
    CHECK(copy(n - 1, n - 1) == 3.0f);
    CHECK(copy(0, 0) == 0.0f);
  }
}

TEST_CASE("Tensor copies are explicit and deep", "[tensor]") {
  auto a = test::random_tensor<float>({4, 9}, 1);
  Tensor<float> b = a.copy();
  b(1, 2) += 1.f;
  CHECK(a(1, 2) + 1.f == b(1, 2));
  static_assert(!std::is_copy_constructible_v<Tensor<float>>);
  Tensor<float> moved = std::move(b);
  CHECK(moved.rows() == 4);
}

TEST_CASE("Tensor resize_rows keeps rows and zeroes new ones and shrink_to_fit releases memory", "[tensor]") {
  auto t = test::random_tensor<float>({5, 3}, 2);
  const float keep = t(4, 2);
  t.resize_rows(100);
  CHECK(t.rows() == 100);
  CHECK(t(4, 2) == keep);
  CHECK(t(99, 0) == 0.f);
  const std::size_t big = t.bytes();
  t.resize_rows(10);
  CHECK(t.bytes() == big);
  t.shrink_to_fit();
  CHECK(t.bytes() == sizeof(float) * std::size_t(10 * t.stride()));
  CHECK(t(4, 2) == keep);
  Tensor<float> r3({2, 2, 2});
  CHECK_THROWS_AS(r3.resize_rows(4), Error);
}

TEST_CASE("MatrixView rejects malformed external buffers", "[tensor][errors]") {
  alignas(64) float buf[64] = {};
  CHECK_NOTHROW(ConstView<float>(buf, 4, 8, 16));
  CHECK_THROWS_AS(ConstView<float>(buf, 4, 8, 7), Error);    // stride shorter than a row
  CHECK_THROWS_AS(ConstView<float>(buf, -1, 8, 8), Error);   // negative shape
  CHECK_THROWS_AS(ConstView<float>(nullptr, 2, 2, 2), Error);
  CHECK_NOTHROW(ConstView<float>(nullptr, 0, 2, 2));
  const auto* misaligned = reinterpret_cast<const float*>(reinterpret_cast<const char*>(buf) + 1);
  CHECK_THROWS_AS(ConstView<float>(misaligned, 2, 2, 2), Error);
  try {
    (void)ConstView<float>(buf, 4, 8, 7);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("stride 7") != std::string::npos);
  }
}

TEST_CASE("MatrixView blocks are bounds-checked views of the same memory", "[tensor][errors]") {
  auto t = test::random_tensor<float>({6, 10}, 3);
  auto b = t.view().block(1, 3, 2, 5);
  CHECK(b(0, 0) == t(1, 2));
  CHECK(b(2, 4) == t(3, 6));
  CHECK(b.stride() == t.stride());
  CHECK_FALSE(b.is_padded());
  CHECK_THROWS_AS(t.view().block(4, 3, 0, 1), Error);
  CHECK_THROWS_AS(t.view().block(0, 1, 8, 3), Error);
  CHECK_THROWS_AS(t.view().middle_cols(-1, 2), Error);
}

TEST_CASE("copy and check_shape", "[tensor][errors]") {
  auto a = test::random_tensor<double>({3, 4}, 4);
  Tensor<double> b({3, 4});
  copy<double>(a.view(), b.view());
  CHECK(b(2, 3) == a(2, 3));
  Tensor<double> c({4, 3});
  CHECK_THROWS_AS(copy<double>(a.view(), c.view()), Error);
  CHECK_THROWS_AS(check_shape(a.view(), 3, 5, "test", "a"), Error);
  CHECK_NOTHROW(check_shape(a.view(), -1, 4, "test", "a"));
}
