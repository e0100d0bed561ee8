// Matrix products on views, C = alpha * op(A) * op(B) + beta * C: float products through engram's
// own kernels (core/gemm_kernel.hpp packed and register-tiled, core/weight_gemm.hpp for a few rows
// times a [out, in] weight), the smallest ones and double through Eigen maps.
#pragma once

#include <span>
#include <type_traits>

#include <Eigen/Core>

#include "engram/core/gemm_kernel.hpp"
#include "engram/core/parallel.hpp"
#include "engram/core/tensor.hpp"
#include "engram/core/weight_gemm.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Whether an operand enters the product transposed.
enum class Trans { no, yes };

namespace detail {
template <class T>
using EigenRowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const EigenRowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using MutMap = Eigen::Map<EigenRowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
ConstMap<T> eigen_map(ConstView<T> v) {
  return ConstMap<T>(v.data(), v.rows(), v.cols(), Eigen::OuterStride<>(v.stride()));
}
template <class T>
MutMap<T> eigen_map(View<T> v) {
  return MutMap<T>(v.data(), v.rows(), v.cols(), Eigen::OuterStride<>(v.stride()));
}

// Products of at least this many multiply-adds (and both sides of C at least 32) take the packed
// kernel; below, Eigen's unpacked loops are as fast (measured: 64^3 within 10% either way, 128^3
// and 256 x 64 x 64 faster packed, 16 x 64 x 64 1.4x slower packed).
inline constexpr double kPackedMinMacs = 1 << 19;
}  // namespace detail

/// C [m, n] = alpha * op(A) [m, k] * op(B) [k, n] + beta * C. beta == 0 ignores C's contents
/// (NaN included). Shapes are checked; C sharing an element with A or B is an Error (the kernels
/// pack A and B while they write C). Results are deterministic and do not depend on the thread
/// count.
template <class T>
void gemm(ConstView<T> a, Trans ta, ConstView<T> b, Trans tb, View<T> c, T alpha = T(1), T beta = T(0)) {
  const Index m = ta == Trans::no ? a.rows() : a.cols();
  const Index k = ta == Trans::no ? a.cols() : a.rows();
  const Index kb = tb == Trans::no ? b.rows() : b.cols();
  const Index n = tb == Trans::no ? b.cols() : b.rows();
  check(k == kb, "gemm", "inner dimensions differ: op(A) is [", m, ", ", k, "], op(B) is [", kb, ", ", n, "]");
  check(c.rows() == m && c.cols() == n, "gemm", "C expected shape [", m, ", ", n, "], got [", c.rows(), ", ",
        c.cols(), "]");
  check(!detail::views_overlap<T>(a, c) && !detail::views_overlap<T>(b, c), "gemm", "C [", m, ", ", n,
        "] shares memory with A or B: the product needs a separate output");
  if (m == 0 || n == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (k > 0) {
      if (ta == Trans::no && tb == Trans::yes && m <= weight_gemm::kMaxRows)
        return weight_gemm::few_rows(a, WeightView::of(b), c, alpha, beta);
      if (m >= 32 && n >= 32 && double(m) * double(n) * double(k) >= detail::kPackedMinMacs)
        return sgemm::gemm(a, ta == Trans::yes, b, tb == Trans::yes, c, alpha, beta);
    }
  }
  auto C = detail::eigen_map(c);
  if (k == 0) {
    if (beta == T(0)) C.setZero();
    else C *= beta;
    return;
  }
  const auto A = detail::eigen_map(a);
  const auto B = detail::eigen_map(b);
  // beta == 0 assigns (Eigen's own fast path, identical to a raw Eigen product); otherwise scale
  // and accumulate.
  const auto product = [&](auto&& op_a, auto&& op_b) {
    if (beta == T(0)) {
      C.noalias() = alpha * op_a * op_b;
    } else {
      if (beta != T(1)) C *= beta;
      C.noalias() += alpha * op_a * op_b;
    }
  };
  if (ta == Trans::no && tb == Trans::no) product(A, B);
  else if (ta == Trans::no) product(A, B.transpose());
  else if (tb == Trans::no) product(A.transpose(), B);
  else product(A.transpose(), B.transpose());
}

/// C = A * B.
template <class T>
void matmul(ConstView<T> a, ConstView<T> b, View<T> c) {
  gemm<T>(a, Trans::no, b, Trans::no, c);
}
/// C = A * B^T (activations times a PyTorch [out, in] weight).
template <class T>
void matmul_nt(ConstView<T> a, ConstView<T> b, View<T> c) {
  gemm<T>(a, Trans::no, b, Trans::yes, c);
}
/// C = A^T * B.
template <class T>
void matmul_tn(ConstView<T> a, ConstView<T> b, View<T> c) {
  gemm<T>(a, Trans::yes, b, Trans::no, c);
}

/// C[i] = alpha * op(A[i]) * op(B[i]) + beta * C[i] for every i, one product per thread
/// (the products of a batch are independent, e.g. one per attention head).
template <class T>
void gemm_batched(std::span<const ConstView<T>> a, Trans ta, std::span<const ConstView<T>> b, Trans tb,
                  std::span<const View<T>> c, T alpha = T(1), T beta = T(0)) {
  check(a.size() == b.size() && a.size() == c.size(), "gemm_batched", "batch sizes differ: A ", a.size(), ", B ",
        b.size(), ", C ", c.size());
  parallel_for(0, Index(a.size()), [&](Index i) { gemm<T>(a[i], ta, b[i], tb, c[i], alpha, beta); });
}

ENGRAM_NAMESPACE_END
