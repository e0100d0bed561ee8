// Build configuration: index type, the arch-named namespace that keeps SIMD code ODR-safe.
#pragma once

#include <cstddef>
#include <cstdint>

// Every header except error.hpp opens ENGRAM_NAMESPACE_BEGIN. The inline namespace carries the
// instruction set the translation unit was compiled for, so two TUs built with different -m flags
// link distinct symbols instead of silently sharing one (xsimd's batch<float> changes with flags
// while the mangled name of a plain inline function would not).
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define ENGRAM_ARCH_NAMESPACE arch_avx512bw
#elif defined(__AVX512F__)
#define ENGRAM_ARCH_NAMESPACE arch_avx512f
#elif defined(__AVX2__) && defined(__FMA__)
#define ENGRAM_ARCH_NAMESPACE arch_avx2_fma
#elif defined(__AVX2__)
#define ENGRAM_ARCH_NAMESPACE arch_avx2
#elif defined(__AVX__)
#define ENGRAM_ARCH_NAMESPACE arch_avx
#elif defined(__SSE4_2__)
#define ENGRAM_ARCH_NAMESPACE arch_sse4_2
#elif defined(__ARM_NEON)
#define ENGRAM_ARCH_NAMESPACE arch_neon
#else
#define ENGRAM_ARCH_NAMESPACE arch_baseline
#endif

#define ENGRAM_NAMESPACE_BEGIN \
  namespace engram {           \
  inline namespace ENGRAM_ARCH_NAMESPACE {
#define ENGRAM_NAMESPACE_END \
  }                          \
  }

#ifndef NDEBUG
#define ENGRAM_DEBUG_ASSERTS 1
#endif

namespace engram {
/// Signed index type used for every size, shape and offset.
using Index = std::ptrdiff_t;

/// Library version (kept in step with CMakeLists.txt).
inline constexpr int version_major = 0;
inline constexpr int version_minor = 1;
inline constexpr int version_patch = 0;
}  // namespace engram
