// NaN/Inf detection for the NaN policy: one FMA per SIMD register over a view (x * 0 is NaN
// exactly when x is NaN or infinite, and a sum holding a NaN stays NaN), and the error that names
// where the first non-finite value is.
#pragma once

#include <cmath>
#include <string_view>

#include "engram/core/error.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

/// True when x[0, n) holds no NaN and no infinity.
template <class T>
bool all_finite(const T* x, Index n) {
  using B = simd::batch<T>;
  constexpr Index W = simd::width<T>;
  const B zero(T(0));
  B p0 = zero, p1 = zero;  // two probes: the FMA latency, not the loads, bounds one probe
  Index i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    p0 = xsimd::fma(simd::load(x + i), zero, p0);
    p1 = xsimd::fma(simd::load(x + i + W), zero, p1);
  }
  for (; i + W <= n; i += W) p0 = xsimd::fma(simd::load(x + i), zero, p0);
  T p = simd::reduce_add(p0 + p1);
  for (; i < n; ++i) p += x[i] * T(0);
  return p == T(0);
}

/// True when every element of `x` is finite (padding ignored).
template <class T>
bool all_finite(ConstView<T> x) {
  for (Index r = 0; r < x.rows(); ++r)
    if (!all_finite(x.row(r), x.cols())) return false;
  return true;
}

/// Where the first non-finite element of a view is: row and column, or row -1 when there is none.
struct NonFinite {
  Index row = -1, col = -1;
  double value = 0;
  explicit operator bool() const { return row >= 0; }
};

template <class T>
NonFinite find_non_finite(ConstView<T> x) {
  for (Index r = 0; r < x.rows(); ++r) {
    if (all_finite(x.row(r), x.cols())) continue;
    for (Index c = 0; c < x.cols(); ++c)
      if (!std::isfinite(x(r, c))) return {r, c, double(x(r, c))};
  }
  return {};
}

/// Throws Error "<where>: non-finite value <v> in <what> at <row_name> <first_row + r>, column <c>"
/// when `x` holds a NaN or an infinity; free (one pass) otherwise.
template <class T>
void check_finite(ConstView<T> x, std::string_view where, std::string_view what, Index first_row = 0,
                  std::string_view row_name = "position") {
  if (all_finite(x)) return;
  const NonFinite f = find_non_finite(x);
  fail(where, "non-finite value ", f.value, " in ", what, " at ", row_name, " ", first_row + f.row, ", column ", f.col);
}

ENGRAM_NAMESPACE_END
