// Analytic forward FLOPs of a full-attention Transformer versus RMT over sequence length (rmt.md 8):
// Chinchilla per-layer accounting, whole-model and segment-recurrence totals, and the OPT
// configurations of the scaling report's FLOPs figure (arXiv 2304.11062 v1, Figure 3).
#pragma once

#include <array>
#include <string_view>

#include "engram/rmt/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt::flops_report {

/// The shape of a Transformer stack as the FLOP formulas see it.
struct ModelShape {
  std::string_view name;
  Index vocab = 0, layers = 0, d_model = 0, heads = 0, d_ff = 0;
  bool gated_mlp = false;  ///< SwiGLU: 3 FFN matrices (6 n d f) instead of 2 (4 n d f)
};

/// Which terms are counted. A multiply-add is 2 FLOPs; biases, norms, activations and residuals are
/// O(n d) and left out, except the softmax's 3 h n^2 that Chinchilla keeps.
struct Accounting {
  /// Dense: n^2 (query, key) pairs per layer (Chinchilla and the report). Causal: n (n + 1) / 2,
  /// what a kernel that skips the upper triangle (engram's) evaluates.
  bool causal = false;
  bool lm_head = true;           ///< 2 n V d for the vocabulary projection of every content token
  bool embedding_matmul = false; ///< another 2 n V d: the input embedding as a one-hot matmul (Chinchilla)
};

/// Chinchilla (Hoffmann et al. 2022, App. F): dense attention, embedding and LM head as matmuls.
inline constexpr Accounting kChinchilla{false, true, true};
/// One vocabulary matmul (the LM head; a lookup embedding costs nothing). With N = 2^21 it gives the
/// report's x295 for OPT-125M (rmt.md 8.4); the paper's x29 for OPT-175B holds for all three.
inline constexpr Accounting kOneVocabMatmul{false, true, false};
/// Transformer bodies only (no vocabulary terms).
inline constexpr Accounting kBodies{false, false, false};

/// (query, key) pairs of n rows under the accounting.
constexpr double attention_pairs(double n, const Accounting& a) { return a.causal ? n * (n + 1) / 2 : n * n; }

/// F_layer(n) = 8 n d^2 + 4 n d f + 4 pairs d + 3 h pairs (QKV + output projections, FFN, QK^T and
/// PV, softmax; rmt.md 8.1).
constexpr double layer_flops(const ModelShape& m, double n, const Accounting& a) {
  const double d = double(m.d_model), f = double(m.d_ff), p = attention_pairs(n, a);
  return 8 * n * d * d + (m.gated_mlp ? 6 : 4) * n * d * f + 4 * p * d + 3 * double(m.heads) * p;
}

/// Vocabulary terms for `tokens` content tokens.
constexpr double vocab_flops(const ModelShape& m, double tokens, const Accounting& a) {
  return (double(a.lm_head) + double(a.embedding_matmul)) * 2 * tokens * double(m.vocab) * double(m.d_model);
}

/// F_model(n) = L F_layer(n) + vocabulary terms (rmt.md 8.2): one forward pass over n tokens.
constexpr double model_flops(const ModelShape& m, double n, const Accounting& a) {
  return double(m.layers) * layer_flops(m, n, a) + vocab_flops(m, n, a);
}

/// F_full(N): full attention over the whole sequence in one pass (a KV-cache prefill has the same
/// count when the accounting is causal).
constexpr double full_flops(const ModelShape& m, double n_tokens, const Accounting& a) { return model_flops(m, n_tokens, a); }

/// How RMT cuts the sequence: s content tokens per segment and m memory tokens.
struct Segmentation {
  Index segment = 512;  ///< s
  Index memory = 0;     ///< m
  Layout layout = Layout::decoder;
  /// Rows the backbone sees for a segment of `s_k` content tokens: s_k + 2m ([M | x | M]) or
  /// s + m + 3 (the encoder layout is padded to its input size).
  constexpr double rows(double s_k) const {
    return layout == Layout::decoder ? s_k + 2 * double(memory) : double(segment + memory + 3);
  }
};

/// Cost of one segment of `s_k` content tokens: L F_layer(n') + vocabulary terms on the content rows
/// only (the HF code projects all n' rows and slices; engram projects the content rows).
constexpr double segment_flops(const ModelShape& m, double s_k, const Segmentation& g, const Accounting& a) {
  return double(m.layers) * layer_flops(m, g.rows(s_k), a) + vocab_flops(m, s_k, a);
}

/// F_RMT(N) = sum over the ceil(N / s) segments (the last one short) of segment_flops (rmt.md 8.3).
/// With m = 0 and s = 512 it is the report's (N / 512) F_model(512) when 512 divides N.
constexpr double rmt_flops(const ModelShape& m, double n_tokens, const Segmentation& g, const Accounting& a) {
  const double s = double(g.segment);
  const double full_segments = double(Index(n_tokens / s));
  const double rest = n_tokens - full_segments * s;
  return full_segments * segment_flops(m, s, g, a) + (rest > 0 ? segment_flops(m, rest, g, a) : 0.0);
}

/// F_full(N) / F_RMT(N): how many times fewer FLOPs RMT needs (< 1 below about two segments).
constexpr double speedup(const ModelShape& m, double n_tokens, const Segmentation& g, const Accounting& a) {
  return full_flops(m, n_tokens, a) / rmt_flops(m, n_tokens, g, a);
}

/// ARMT (rmt.md 8.3): segments are [x | M] (n' = s_k + m rows, write-only memory) and each layer adds
/// its associative read on every row, 2 n' d d_mem (W_mq) + 2 n' d_key d (phi(q) A) + 2 n' d_key (the
/// denominator), and its write from the m memory rows, 2 m d (d_mem + d + 1) (W_mk, W_mv, w_b) +
/// 2 m d_key d (prev = phi(k) A) + 2 m d_key d (the rank-m update of A); DPFP itself is elementwise.
/// The first segment reads nothing (its state is zero); this counts every segment with its read.
struct ArmtShape {
  Index segment = 512, memory = 10, d_mem = 64, nu = 3;
  constexpr double d_key() const { return 2.0 * double(nu) * double(d_mem); }
};

/// The associative memory's FLOPs of one layer on a segment of `s_k` content tokens.
constexpr double armt_associative_flops(const ModelShape& m, double s_k, const ArmtShape& a) {
  const double d = double(m.d_model), n = s_k + double(a.memory), mm = double(a.memory), k = a.d_key();
  const double read = 2 * n * d * double(a.d_mem) + 2 * n * k * d + 2 * n * k;
  const double write = 2 * mm * d * (double(a.d_mem) + d + 1) + 2 * mm * k * d + 2 * mm * k * d;
  return read + write;
}

/// One ARMT segment: L (F_layer(s_k + m) + associative) + vocabulary terms on the content rows.
constexpr double armt_segment_flops(const ModelShape& m, double s_k, const ArmtShape& a, const Accounting& acc) {
  return double(m.layers) * (layer_flops(m, s_k + double(a.memory), acc) + armt_associative_flops(m, s_k, a)) + vocab_flops(m, s_k, acc);
}

/// F_ARMT(N): the sum over the ceil(N / s) segments (the last one short).
constexpr double armt_flops(const ModelShape& m, double n_tokens, const ArmtShape& a, const Accounting& acc) {
  const double s = double(a.segment);
  const double full_segments = double(Index(n_tokens / s));
  const double rest = n_tokens - full_segments * s;
  return full_segments * armt_segment_flops(m, s, a, acc) + (rest > 0 ? armt_segment_flops(m, rest, a, acc) : 0.0);
}

/// The OPT family of the report's FLOPs figure (Zhang et al. 2022, Table 1): vocabulary 50272,
/// d_ff = 4 d. rmt.md 8.4 lists these five.
inline constexpr std::array<ModelShape, 5> kOpt = {{
    {"OPT-125M", 50272, 12, 768, 12, 3072},
    {"OPT-1.3B", 50272, 24, 2048, 32, 8192},
    {"OPT-6.7B", 50272, 32, 4096, 32, 16384},
    {"OPT-30B", 50272, 48, 7168, 56, 28672},
    {"OPT-175B", 50272, 96, 12288, 96, 49152},
}};

/// The report's RMT setting: 512-token segments, memory overhead not counted.
inline constexpr Segmentation kReportSegments{512, 0, Layout::decoder};

/// The report's longest input, 4000 segments of 512 tokens (the text's "2,048,000").
inline constexpr double kReportTokens = 2048000;

}  // namespace rmt::flops_report
ENGRAM_NAMESPACE_END
