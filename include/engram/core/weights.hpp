// Weight matrices in inference formats: f32, bf16, f16, and block-quantised q8 (Q8_0-like) and q4
// (Q4_0-like); WeightView (what the kernels take), CompressedMatrix (the owning storage) and the
// per-format SIMD decoders that turn 16 stored weights into fp32 registers.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/half.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

/// How a weight matrix is stored in memory. Products always accumulate in fp32; q8 and q4 products
/// take their input quantised to int8 blocks (core/activation_quant.hpp), as llama.cpp does.
///  - f32: 4 bytes per weight.
///  - bf16, f16: 2 bytes per weight (round to nearest even).
///  - q8: blocks of 32 weights along a row, one f16 scale d and 32 int8 q, w = d q (34 bytes per
///    block, 8.5 bits per weight; llama.cpp's Q8_0). |w - w'| <= d / 2 + |q| |d - d16| per weight.
///  - q4: blocks of 32, one f16 scale d and 32 4-bit q, w = d (q - 8) (18 bytes per block, 4.5 bits
///    per weight; llama.cpp's Q4_0 layout: byte i holds q[i] in its low and q[i + 16] in its high
///    nibble). The scale is the one of a few candidates with the least squared error in the block.
enum class WeightFormat : std::uint8_t { f32, bf16, f16, q8, q4 };

/// Weights per quantisation block (q8, q4); rows of every format are decoded in blocks of this many.
inline constexpr Index kQuantBlock = 32;

/// The format's name as the programs spell it (--weights f32|bf16|f16|q8|q4).
inline std::string_view format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::f32: return "f32";
    case WeightFormat::bf16: return "bf16";
    case WeightFormat::f16: return "f16";
    case WeightFormat::q8: return "q8";
    case WeightFormat::q4: return "q4";
  }
  return "?";
}

/// Parses a format name; an unknown one is an Error listing the names.
inline WeightFormat parse_weight_format(std::string_view name) {
  for (WeightFormat f : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::f16, WeightFormat::q8, WeightFormat::q4})
    if (name == format_name(f)) return f;
  fail("weight format", "unknown format \"", name, "\", expected one of f32, bf16, f16, q8, q4");
}

/// Bytes of one stored row of `cols` weights (quantised rows are padded to whole blocks).
inline Index format_row_bytes(WeightFormat f, Index cols) {
  const Index blocks = (cols + kQuantBlock - 1) / kQuantBlock;
  switch (f) {
    case WeightFormat::f32: return 4 * cols;
    case WeightFormat::bf16:
    case WeightFormat::f16: return 2 * cols;
    case WeightFormat::q8: return blocks * (2 + kQuantBlock);
    case WeightFormat::q4: return blocks * (2 + kQuantBlock / 2);
  }
  return 0;
}

/// A read-only view of a weight matrix [rows, cols] in some format: row r starts at row(r). This is
/// what the products take (core/weight_gemm.hpp); an fp32 view wraps a Tensor without copying.
struct WeightView {
  WeightFormat format = WeightFormat::f32;
  Index rows = 0, cols = 0;
  const unsigned char* base = nullptr;         ///< row r at base + r * stride_bytes ...
  Index stride_bytes = 0;
  const unsigned char* const* table = nullptr;  ///< ... or at table[r] when set (rows spread over a file)

  const unsigned char* row(Index r) const { return table ? table[r] : base + r * stride_bytes; }
  /// Bytes a product reads: every stored row once.
  double bytes() const { return double(rows) * double(format_row_bytes(format, cols)); }

  /// An fp32 matrix as a weight view.
  static WeightView of(ConstView<float> w) {
    WeightView v;
    v.rows = w.rows(), v.cols = w.cols();
    v.base = reinterpret_cast<const unsigned char*>(w.data());
    v.stride_bytes = w.stride() * Index(sizeof(float));
    return v;
  }
};

namespace detail {
inline std::uint16_t load_u16(const unsigned char* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
}  // namespace detail

/// Weight c of a stored row (the slow, obvious decoder the kernels are tested against).
inline float decode_weight(WeightFormat f, const unsigned char* row, Index c) {
  switch (f) {
    case WeightFormat::f32: {
      float v;
      std::memcpy(&v, row + 4 * c, 4);
      return v;
    }
    case WeightFormat::bf16: return bf16_to_float(detail::load_u16(row + 2 * c));
    case WeightFormat::f16: return half_to_float(detail::load_u16(row + 2 * c));
    case WeightFormat::q8: {
      const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock);
      return half_to_float(detail::load_u16(blk)) * float(std::int8_t(blk[2 + c % kQuantBlock]));
    }
    case WeightFormat::q4: {
      const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock / 2);
      const Index i = c % kQuantBlock;
      const int q = i < 16 ? (blk[2 + i] & 0x0F) : (blk[2 + i - 16] >> 4);
      return half_to_float(detail::load_u16(blk)) * float(q - 8);
    }
  }
  return 0;
}

// ---- SIMD decoders -----------------------------------------------------------------------------
// decode_raw<F>(row, c, out) turns weights [c, c + kStep) of a stored row into two fp32 registers
// and returns their scale: kStep = 32 (one quantisation block) with AVX-512, 16 with AVX2. For q8
// and q4 the registers hold the integers (q, q - 8) and the weights are those times the returned
// block scale, so a product can apply the scale once per block (d (q . x)) instead of once per
// register; the other formats return the weights and 1. c is a multiple of kStep and the weights
// exist (whole quantisation blocks always do: rows are padded).
namespace decode {

using Batch = simd::batch<float>;
inline constexpr Index kStep = 2 * simd::width<float> >= 32 ? 32 : 16;
inline constexpr int kVectors = int(kStep / simd::width<float>);

template <WeightFormat F>
inline float decode_raw(const unsigned char* row, Index c, Batch* out) {
#if defined(__AVX512F__)
  if constexpr (F == WeightFormat::f32) {
    out[0] = Batch::load_unaligned(reinterpret_cast<const float*>(row) + c);
    out[1] = Batch::load_unaligned(reinterpret_cast<const float*>(row) + c + 16);
  } else if constexpr (F == WeightFormat::bf16) {
    const __m512i u = _mm512_loadu_si512(row + 2 * c);
    out[0] = Batch(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(u)), 16)));
    out[1] = Batch(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(u, 1)), 16)));
  } else if constexpr (F == WeightFormat::f16) {
    out[0] = Batch(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c))));
    out[1] = Batch(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c + 32))));
  } else if constexpr (F == WeightFormat::q8) {
    const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock);
    const __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
    const __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18)));
    out[0] = Batch(_mm512_cvtepi32_ps(q0));
    out[1] = Batch(_mm512_cvtepi32_ps(q1));
    return half_to_float(detail::load_u16(blk));
  } else {
    const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock / 2);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
    const __m512i eight = _mm512_set1_epi32(8);
    out[0] = Batch(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x0F)), eight)));
    out[1] = Batch(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight)));
    return half_to_float(detail::load_u16(blk));
  }
#elif defined(__AVX2__) && defined(__F16C__)
  if constexpr (F == WeightFormat::f32) {
    out[0] = Batch::load_unaligned(reinterpret_cast<const float*>(row) + c);
    out[1] = Batch::load_unaligned(reinterpret_cast<const float*>(row) + c + 8);
  } else if constexpr (F == WeightFormat::bf16) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
    out[0] = Batch(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(u)), 16)));
    out[1] = Batch(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(u, 1)), 16)));
  } else if constexpr (F == WeightFormat::f16) {
    out[0] = Batch(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c))));
    out[1] = Batch(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c + 16))));
  } else if constexpr (F == WeightFormat::q8) {
    const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock);
    const unsigned char* q = blk + 2 + c % kQuantBlock;
    out[0] = Batch(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)))));
    out[1] = Batch(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)))));
    return half_to_float(detail::load_u16(blk));
  } else {
    // Weights 0-15 of a block are the low nibbles of bytes 0-15, weights 16-31 the high ones.
    const unsigned char* blk = row + (c / kQuantBlock) * (2 + kQuantBlock / 2);
    const bool high = c % kQuantBlock != 0;
    for (int h = 0; h < 2; ++h) {
      const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * h)));
      const __m256i q = high ? _mm256_srli_epi32(b, 4) : _mm256_and_si256(b, _mm256_set1_epi32(0x0F));
      out[h] = Batch(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(8))));
    }
    return half_to_float(detail::load_u16(blk));
  }
#else
  // Without AVX2: the obvious decoder; quantised values come out as integers with their scale.
  alignas(64) float buf[kStep];
  float d = 1.0f;
  if constexpr (F == WeightFormat::q8 || F == WeightFormat::q4) {
    const Index block_bytes = F == WeightFormat::q8 ? 2 + kQuantBlock : 2 + kQuantBlock / 2;
    d = half_to_float(detail::load_u16(row + (c / kQuantBlock) * block_bytes));
  }
  for (Index i = 0; i < kStep; ++i) buf[i] = d != 0.0f ? decode_weight(F, row, c + i) / d : 0.0f;
  for (int h = 0; h < kVectors; ++h) out[h] = Batch::load_aligned(buf + h * simd::width<float>);
  return d;
#endif
  return 1.0f;
}

/// decode_raw scaled: the weights themselves.
template <WeightFormat F>
inline void decode_step(const unsigned char* row, Index c, Batch* out) {
  const float d = decode_raw<F>(row, c, out);
  if constexpr (F == WeightFormat::q8 || F == WeightFormat::q4)
    for (int h = 0; h < kVectors; ++h) out[h] *= Batch(d);
}

/// Weights [c0, c0 + n) of a stored row into out (fp32): kStep at a time, the tail one by one (an
/// fp32/bf16/f16 row need not be padded).
template <WeightFormat F>
inline void decode_range(const unsigned char* row, Index c0, Index n, float* out) {
  Index i = 0;
  if (c0 % kStep == 0)
    for (; i + kStep <= n; i += kStep) {
      Batch v[kVectors];
      decode_step<F>(row, c0 + i, v);
      for (int h = 0; h < kVectors; ++h) v[h].store_unaligned(out + i + h * simd::width<float>);
    }
  for (; i < n; ++i) out[i] = decode_weight(F, row, c0 + i);
}

/// Calls f.template operator()<F>() with the format as a compile-time constant.
template <class Fn>
decltype(auto) dispatch(WeightFormat format, Fn&& f) {
  switch (format) {
    case WeightFormat::f32: return f.template operator()<WeightFormat::f32>();
    case WeightFormat::bf16: return f.template operator()<WeightFormat::bf16>();
    case WeightFormat::f16: return f.template operator()<WeightFormat::f16>();
    case WeightFormat::q8: return f.template operator()<WeightFormat::q8>();
    case WeightFormat::q4: break;
  }
  return f.template operator()<WeightFormat::q4>();
}

}  // namespace decode

/// Weights [c0, c0 + n) of row r of w, decoded to fp32.
inline void decode_row(const WeightView& w, Index r, Index c0, Index n, float* out) {
  decode::dispatch(w.format, [&]<WeightFormat F>() { decode::decode_range<F>(w.row(r), c0, n, out); });
}

/// Checks that `format` can hold the keys and values of attention computing in T: f32 (T itself), or
/// f16/bf16 for T = float (widened by widen_rows). Throws Error naming `where` otherwise.
template <class T>
void check_kv_format(WeightFormat format, const char* where) {
  check(format == WeightFormat::f32 || format == WeightFormat::f16 || format == WeightFormat::bf16, where,
        "keys and values are stored as f32, f16 or bf16, got ", format_name(format));
  check(format == WeightFormat::f32 || std::is_same_v<T, float>, where, "16-bit keys and values (", format_name(format),
        ") need a float model, this one computes in double");
}

/// Rows [r0, r0 + n) of 16-bit floats x (f16 or bf16 bit patterns) widened to fp32 into out [n, ld]
/// (exact); columns x.cols() .. ld - 1 of out are set to zero, so kernels may read padded rows.
inline void widen_rows(ConstView<std::uint16_t> x, WeightFormat format, Index r0, Index n, float* out, Index ld) {
  check(format == WeightFormat::f16 || format == WeightFormat::bf16, "widen_rows", "expected f16 or bf16, got ", format_name(format));
  const Index d = x.cols();
  decode::dispatch(format, [&]<WeightFormat F>() {
    if constexpr (F == WeightFormat::bf16 || F == WeightFormat::f16)
      for (Index r = 0; r < n; ++r) {
        decode::decode_range<F>(reinterpret_cast<const unsigned char*>(x.row(r0 + r)), 0, d, out + r * ld);
        std::fill(out + r * ld + d, out + (r + 1) * ld, 0.0f);
      }
  });
}

/// x[0 .. n) rounded to nearest even into 16-bit floats (f16 or bf16 bit patterns).
inline void narrow_row(const float* x, Index n, WeightFormat format, std::uint16_t* out) {
  check(format == WeightFormat::f16 || format == WeightFormat::bf16, "narrow_row", "expected f16 or bf16, got ", format_name(format));
  if (format == WeightFormat::f16)
    for (Index c = 0; c < n; ++c) out[c] = float_to_half(x[c]);
  else
    for (Index c = 0; c < n; ++c) out[c] = float_to_bf16(x[c]);
}

// ---- Quantisation ------------------------------------------------------------------------------
namespace detail {
// Largest magnitude a f16 holds; q8/q4 scales and f16 weights beyond it cannot be stored.
inline constexpr float kHalfMax = 65504.0f;

// One q8 block: d = amax / 127 rounded to f16, q = round(w / d).
inline void quantize_q8_block(const float* w, Index n, unsigned char* out) {
  float amax = 0;
  for (Index i = 0; i < n; ++i) amax = std::max(amax, std::abs(w[i]));
  const std::uint16_t d16 = float_to_half(amax / 127.0f);
  const float d = half_to_float(d16), inv = d > 0 ? 1.0f / d : 0.0f;
  std::memcpy(out, &d16, 2);
  for (Index i = 0; i < kQuantBlock; ++i) {
    const float q = i < n ? std::nearbyint(w[i] * inv) : 0.0f;
    out[2 + i] = static_cast<unsigned char>(std::int8_t(std::clamp(q, -127.0f, 127.0f)));
  }
}

// One q4 block: the scale with the least squared error among d = m / -8 (Q4_0's rule, m the
// signed value of largest magnitude) and a few shrunk candidates m / -(8 + t / 4); q = round(w / d) + 8
// clamped to [0, 15]. Padding weights are 0 (q = 8).
inline void quantize_q4_block(const float* w, Index n, unsigned char* out) {
  float m = 0;
  for (Index i = 0; i < n; ++i)
    if (std::abs(w[i]) > std::abs(m)) m = w[i];
  std::uint16_t best16 = 0;
  double best_err = INFINITY;
  for (int t = 0; t <= 8; ++t) {
    const std::uint16_t d16 = float_to_half(m / -(8.0f + 0.25f * float(t)));
    const float d = half_to_float(d16), inv = d != 0 ? 1.0f / d : 0.0f;
    double err = 0;
    for (Index i = 0; i < n; ++i) {
      const float q = std::clamp(std::nearbyint(w[i] * inv) + 8.0f, 0.0f, 15.0f);
      const double e = double(w[i]) - double(d) * double(q - 8.0f);
      err += e * e;
    }
    if (err < best_err) best_err = err, best16 = d16;
  }
  const float d = half_to_float(best16), inv = d != 0 ? 1.0f / d : 0.0f;
  std::memcpy(out, &best16, 2);
  std::array<int, kQuantBlock> q{};
  for (Index i = 0; i < kQuantBlock; ++i) q[std::size_t(i)] = i < n ? int(std::clamp(std::nearbyint(w[i] * inv) + 8.0f, 0.0f, 15.0f)) : 8;
  for (Index i = 0; i < kQuantBlock / 2; ++i) out[2 + i] = static_cast<unsigned char>(q[std::size_t(i)] | (q[std::size_t(i + 16)] << 4));
}
}  // namespace detail

/// A weight matrix [rows, cols] held in a compressed format: owned storage (quantised or converted
/// from fp32), or rows that live in memory someone else keeps alive (a memory-mapped bf16/f16
/// checkpoint: no conversion, no copy). Immutable once built; move-only.
class CompressedMatrix {
 public:
  CompressedMatrix() = default;
  CompressedMatrix(CompressedMatrix&&) noexcept = default;
  CompressedMatrix& operator=(CompressedMatrix&&) noexcept = default;

  /// w converted to `format` (not f32). Throws Error for a non-finite weight, or a value that the
  /// format (or its f16 scale) cannot hold; `what` names the matrix in the message.
  static CompressedMatrix quantize(ConstView<float> w, WeightFormat format, std::string_view what = "weight") {
    check(format != WeightFormat::f32, "CompressedMatrix", "f32 weights stay a Tensor; nothing to compress");
    CompressedMatrix m;
    m.format_ = format, m.rows_ = w.rows(), m.cols_ = w.cols();
    m.stride_ = format_row_bytes(format, w.cols());
    m.storage_.assign(std::size_t(m.rows_ * m.stride_), 0);
    for (Index r = 0; r < w.rows(); ++r) {
      const float* src = w.row(r);
      unsigned char* dst = m.storage_.data() + r * m.stride_;
      float amax = 0;
      for (Index c = 0; c < w.cols(); ++c) {
        check(std::isfinite(src[c]), "CompressedMatrix", what, " holds a non-finite value (", src[c], ") at [", r, ", ", c, "]");
        amax = std::max(amax, std::abs(src[c]));
      }
      // q8's scale is amax / 127 and q4's at most amax / 8: both must fit a f16.
      const float limit = format == WeightFormat::q8 ? 127.0f * detail::kHalfMax : format == WeightFormat::q4 ? 8.0f * detail::kHalfMax : detail::kHalfMax;
      check(format == WeightFormat::bf16 || amax <= limit, "CompressedMatrix", what, " row ", r, " holds ", amax,
            ", beyond what ", format_name(format), " stores (at most ", limit, ")");
      switch (format) {
        case WeightFormat::bf16:
          for (Index c = 0; c < w.cols(); ++c) {
            const std::uint16_t v = float_to_bf16(src[c]);
            std::memcpy(dst + 2 * c, &v, 2);
          }
          break;
        case WeightFormat::f16:
          for (Index c = 0; c < w.cols(); ++c) {
            const std::uint16_t v = float_to_half(src[c]);
            std::memcpy(dst + 2 * c, &v, 2);
          }
          break;
        case WeightFormat::q8:
          for (Index c = 0; c < w.cols(); c += kQuantBlock)
            detail::quantize_q8_block(src + c, std::min(kQuantBlock, w.cols() - c), dst + (c / kQuantBlock) * (2 + kQuantBlock));
          break;
        case WeightFormat::q4:
          for (Index c = 0; c < w.cols(); c += kQuantBlock)
            detail::quantize_q4_block(src + c, std::min(kQuantBlock, w.cols() - c), dst + (c / kQuantBlock) * (2 + kQuantBlock / 2));
          break;
        case WeightFormat::f32: break;
      }
    }
    return m;
  }

  /// Rows stored elsewhere in bf16 or f16 (little-endian, `cols` contiguous values each), kept alive
  /// by `owner`: e.g. the rows of a memory-mapped checkpoint, used in place.
  static CompressedMatrix external(WeightFormat format, Index cols, std::vector<const unsigned char*> rows, std::shared_ptr<const void> owner) {
    check(format == WeightFormat::bf16 || format == WeightFormat::f16, "CompressedMatrix::external", "rows in place need bf16 or f16, got ",
          format_name(format));
    CompressedMatrix m;
    m.format_ = format, m.rows_ = Index(rows.size()), m.cols_ = cols;
    m.stride_ = format_row_bytes(format, cols);
    m.table_ = std::move(rows);
    m.owner_ = std::move(owner);
    return m;
  }

  bool empty() const { return rows_ == 0; }
  WeightFormat format() const { return format_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// Whether the rows live in memory this matrix does not own (a mapped checkpoint).
  bool in_place() const { return !table_.empty(); }
  /// Bytes of the stored weights (in place: the bytes read from the mapping).
  std::size_t bytes() const { return std::size_t(rows_ * stride_); }

  WeightView view() const {
    WeightView v;
    v.format = format_, v.rows = rows_, v.cols = cols_;
    v.base = storage_.data();
    v.stride_bytes = stride_;
    v.table = table_.empty() ? nullptr : table_.data();
    return v;
  }

  /// Row r decoded to fp32 (out holds cols() floats).
  void dequantize_row(Index r, float* out) const {
    check(r >= 0 && r < rows_, "CompressedMatrix", "row ", r, " outside [0, ", rows_, ")");
    decode_row(view(), r, 0, cols_, out);
  }
  /// The whole matrix decoded to fp32.
  Tensor<float> dequantize() const {
    Tensor<float> t({rows_, cols_});
    for (Index r = 0; r < rows_; ++r) dequantize_row(r, t.row(r));
    return t;
  }

 private:
  WeightFormat format_ = WeightFormat::f32;
  Index rows_ = 0, cols_ = 0, stride_ = 0;
  std::vector<unsigned char> storage_;
  std::vector<const unsigned char*> table_;
  std::shared_ptr<const void> owner_;
};

ENGRAM_NAMESPACE_END
