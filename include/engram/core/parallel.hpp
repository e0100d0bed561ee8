// Threads: OpenMP thread-count control and a parallel loop that carries exceptions out safely.
#pragma once

#include <exception>
#include <mutex>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "engram/core/config.hpp"
#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Sets the number of threads engram (and Eigen's GEMM, which follows OpenMP) may use.
/// Results are deterministic for a given thread count.
inline void set_num_threads(int n) {
  check(n >= 1, "set_num_threads", "thread count must be >= 1, got ", n);
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

/// Number of threads a parallel region will use.
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Index of the calling thread inside a parallel region (0 outside).
inline int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

namespace detail {
// Runs f(i) for i in [begin, end) across the OpenMP team with a static or a dynamic schedule;
// exceptions cannot cross an OpenMP region, so the first one is carried out and rethrown.
template <bool Dynamic, class F>
void omp_loop(Index begin, Index end, F& f) {
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](Index i) {
    try {
      f(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
#if defined(_OPENMP)
  if constexpr (Dynamic) {
#pragma omp parallel for schedule(dynamic, 1)
    for (Index i = begin; i < end; ++i) guarded(i);
  } else {
#pragma omp parallel for schedule(static)
    for (Index i = begin; i < end; ++i) guarded(i);
  }
#else
  for (Index i = begin; i < end; ++i) guarded(i);
#endif
  if (error) std::rethrow_exception(error);
}

// Whether a loop of n iterations should open a parallel region here.
inline bool go_parallel(Index n) {
#if defined(_OPENMP)
  return n > 1 && !omp_in_parallel() && omp_get_max_threads() > 1;
#else
  (void)n;
  return false;
#endif
}
}  // namespace detail

/// Calls f(i) for i in [begin, end) on up to num_threads() threads with a static schedule, so the
/// assignment of indices to threads is fixed. Runs serially when already inside a parallel region
/// or when `parallel` is false. The first exception thrown by any f(i) is rethrown here.
template <class F>
void parallel_for(Index begin, Index end, F&& f, bool parallel = true) {
  if (end <= begin) return;
  if (parallel && detail::go_parallel(end - begin)) return detail::omp_loop<false>(begin, end, f);
  for (Index i = begin; i < end; ++i) f(i);
}

/// Like parallel_for, but hands out indices one at a time (for loops whose iterations differ a lot
/// in cost, such as causal attention blocks). Each index still runs on exactly one thread.
template <class F>
void parallel_for_dynamic(Index begin, Index end, F&& f) {
  if (end <= begin) return;
  if (detail::go_parallel(end - begin)) return detail::omp_loop<true>(begin, end, f);
  for (Index i = begin; i < end; ++i) f(i);
}

ENGRAM_NAMESPACE_END
