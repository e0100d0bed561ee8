// Shared test helpers: seeded random tensors, double-precision references, norm-scaled comparisons.
#pragma once

#include <catch2/catch.hpp>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/core/tensor.hpp"

namespace engram::test {

/// Sets the thread count for a scope, restored even when a REQUIRE throws (e.g. one thread for
/// finite-difference loops of tiny calls, where parallel regions cost more than the work).
struct ThreadCount {
  int before = num_threads();
  explicit ThreadCount(int n) { set_num_threads(n); }
  ~ThreadCount() { set_num_threads(before); }
  void set(int n) const { set_num_threads(n); }
};

/// Runs `f`, which must throw an engram::Error, and returns its message; fails the check (and
/// returns "") when f returns or throws anything else.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("threw a non-engram exception: " << e.what());
    return {};
  } catch (...) {
    FAIL_CHECK("threw something that is not an exception");
    return {};
  }
  FAIL_CHECK("did not throw");
  return {};
}

/// Sizes that straddle every SIMD width (AVX2 8, AVX-512 16 floats) and the 8-accumulator loops.
inline const std::vector<Index> kAwkwardSizes = {1, 2, 7, 15, 16, 17, 31, 63, 64, 65, 129, 257};

template <class T>
Tensor<T> random_tensor(const Shape& shape, std::uint64_t seed, double scale = 1.0) {
  Tensor<T> t(shape);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  for (Index r = 0; r < t.rows(); ++r)
    for (Index c = 0; c < t.cols(); ++c) t.row(r)[c] = T(dist(rng));
  return t;
}

/// Fills the padding of every row with NaN, so a kernel that reads padding it should ignore fails.
template <class T>
void poison_padding(Tensor<T>& t) {
  for (Index r = 0; r < t.rows(); ++r)
    for (Index c = t.cols(); c < t.stride(); ++c) t.row(r)[c] = std::numeric_limits<T>::quiet_NaN();
}

/// A dense double matrix used by reference implementations.
struct Mat {
  Index rows = 0, cols = 0;
  std::vector<double> v;
  Mat() = default;
  Mat(Index r, Index c, double fill = 0.0) : rows(r), cols(c), v(std::size_t(r * c), fill) {}
  double& operator()(Index r, Index c) { return v[std::size_t(r * cols + c)]; }
  double operator()(Index r, Index c) const { return v[std::size_t(r * cols + c)]; }
};

template <class T>
Mat to_mat(ConstView<T> x) {
  Mat m(x.rows(), x.cols());
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c) m(r, c) = double(x(r, c));
  return m;
}

inline double max_abs(const Mat& m) {
  double a = 0;
  for (double x : m.v) a = std::max(a, std::abs(x));
  return a;
}

template <class T>
double max_abs_diff(ConstView<T> got, const Mat& ref) {
  REQUIRE(got.rows() == ref.rows);
  REQUIRE(got.cols() == ref.cols);
  double worst = 0;
  for (Index r = 0; r < ref.rows; ++r)
    for (Index c = 0; c < ref.cols; ++c) {
      const double d = std::abs(double(got(r, c)) - ref(r, c));
      if (!(d <= worst)) worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
    }
  return worst;
}

/// Whether two matrices of the same shape hold the same bits in every element (NaN and -inf alike).
template <class T>
bool same_bits(ConstView<T> a, ConstView<T> b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index r = 0; r < a.rows(); ++r)
    if (a.cols() > 0 && std::memcmp(a.row(r), b.row(r), sizeof(T) * std::size_t(a.cols())) != 0) return false;
  return true;
}

/// Machine epsilon of T as double.
template <class T>
constexpr double eps() {
  return double(std::numeric_limits<T>::epsilon());
}

/// Checks max |got - ref| <= tolerance, printing both on failure.
template <class T>
void require_close(ConstView<T> got, const Mat& ref, double tolerance, const std::string& what) {
  const double err = max_abs_diff(got, ref);
  INFO(what << ": max abs error " << err << ", tolerance " << tolerance << ", max |ref| " << max_abs(ref));
  REQUIRE(err <= tolerance);
}

}  // namespace engram::test

#include <filesystem>

#include "engram/io/checkpoint.hpp"

namespace engram::test {

/// Path of a committed fixture.
inline std::filesystem::path fixture(const std::string& relative) { return std::filesystem::path(ENGRAM_FIXTURES_DIR) / relative; }

/// A fresh, empty temporary directory removed when the object dies.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("engram_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// max |got - ref| / max |ref|: the relative error the golden comparisons use (scalar types named:
/// relative_error<T>(got, float_ref) or relative_error<T, U>; a NaN difference counts as infinite).
template <class T, class U = float>
double relative_error(ConstView<T> got, std::type_identity_t<ConstView<U>> ref) {
  REQUIRE(got.rows() == ref.rows());
  REQUIRE(got.cols() == ref.cols());
  double err = 0, scale = 0;
  for (Index r = 0; r < ref.rows(); ++r)
    for (Index c = 0; c < ref.cols(); ++c) {
      const double d = std::abs(double(got(r, c)) - double(ref(r, c)));
      err = std::isnan(d) ? INFINITY : std::max(err, d);
      scale = std::max(scale, std::abs(double(ref(r, c))));
    }
  return err / std::max(scale, 1e-300);
}

/// `x` converted to scalar type T (cast<T>(float_view) or cast<T, U>).
template <class T, class U = float>
Tensor<T> cast(std::type_identity_t<ConstView<U>> x) {
  Tensor<T> out({x.rows(), x.cols()});
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c) out(r, c) = T(x(r, c));
  return out;
}

/// Token ids stored as I64 in a golden file.
inline std::vector<std::int32_t> read_tokens(const Checkpoint& golden, const std::string& name = "tokens") {
  const auto t = golden.read<std::int64_t>(name);
  std::vector<std::int32_t> ids;
  for (Index i = 0; i < t.numel(); ++i) ids.push_back(std::int32_t(t.data()[i]));
  return ids;
}

}  // namespace engram::test
