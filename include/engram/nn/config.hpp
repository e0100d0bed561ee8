// ModelConfig: the shape and flavour of a transformer stack (Llama, GPT-2, BERT and relatives).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "engram/core/error.hpp"
#include "engram/core/ops.hpp"

ENGRAM_NAMESPACE_BEGIN

enum class NormKind { rms, layer };
/// pre: x + f(norm(x)) (Llama, GPT-2); post: norm(x + f(x)) (BERT).
enum class NormPlacement { pre, post };
enum class Activation { gelu_tanh, gelu_erf, silu, relu };
/// plain: down(act(up(x))); gated: down(act(gate(x)) * up(x)) (SwiGLU when act = silu).
enum class MlpKind { plain, gated };
enum class PositionKind { rope, learned, none };

/// Everything that fixes the shapes and the arithmetic of a model. Presets: llama(), gpt2(), bert()
/// (they never divide by zero: a head count that does not divide d_model leaves head_dim 0, which
/// validate() reports).
struct ModelConfig {
  std::string architecture = "llama";
  Index vocab_size = 0;
  Index d_model = 0;
  Index n_layers = 0;
  Index n_heads = 0;
  Index n_kv_heads = 0;  ///< < n_heads: grouped-query attention
  Index head_dim = 0;
  Index d_ff = 0;
  NormKind norm = NormKind::rms;
  double norm_eps = 1e-5;
  NormPlacement placement = NormPlacement::pre;
  MlpKind mlp = MlpKind::gated;
  Activation activation = Activation::silu;
  bool qkv_bias = false;
  bool out_bias = false;
  bool mlp_bias = false;
  PositionKind positions = PositionKind::rope;
  Index max_positions = 4096;  ///< learned positions: table size; RoPE: informational
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  RopePairing rope_pairing = RopePairing::rotate_half;
  bool tie_embeddings = false;
  bool causal = true;           ///< false: bidirectional encoder
  bool final_norm = true;       ///< norm after the last block (pre-norm stacks)
  bool embedding_norm = false;  ///< norm after the embeddings (BERT)
  Index type_vocab_size = 0;    ///< token-type embeddings (BERT); type 0 is added to every token
  /// Sliding-window attention (Mistral): each query sees its `sliding_window` most recent keys,
  /// itself included; keys older than that are skipped and, without a cache policy, dropped from
  /// the KV cache. 0: full causal attention.
  Index sliding_window = 0;

  Index qkv_dim() const { return (n_heads + 2 * n_kv_heads) * head_dim; }

  /// Largest value validate() accepts for any one width or count: far beyond every real model
  /// (widths are at most ~2^15 today), small enough that products of three never overflow.
  static constexpr Index kMaxDim = Index(1) << 20;

  /// Throws Error naming the first field out of range. Checks every shape for positivity and
  /// divisibility, every real parameter for finiteness and range (eps, theta, RoPE scaling: no NaN
  /// frequency can come out of a valid config), and that the weight count does not overflow.
  void validate() const {
    const char* where = "ModelConfig";
    auto in = [&](Index v, Index lo, Index hi, const char* name) {
      check(v >= lo && v <= hi, where, name, " must be in [", lo, ", ", hi, "], got ", v);
    };
    in(vocab_size, 1, Index(std::numeric_limits<std::int32_t>::max()), "vocab_size");  // token ids are int32
    in(d_model, 1, kMaxDim, "d_model");
    in(n_layers, 0, kMaxDim, "n_layers");
    in(n_heads, 1, kMaxDim, "n_heads");
    in(n_kv_heads, 1, n_heads, "n_kv_heads");
    check(n_heads % n_kv_heads == 0, where, "n_kv_heads must divide n_heads (", n_heads, "), got ", n_kv_heads);
    check(head_dim != 0 || d_model % n_heads == 0, where, "d_model ", d_model, " is not divisible by n_heads ", n_heads,
          " (set head_dim explicitly or choose a divisor)");
    in(head_dim, 1, kMaxDim, "head_dim");
    if (architecture == "gpt2" || architecture == "bert")  // the fused [3C, C] projection has no room for another width
      check(n_heads * head_dim == d_model, where, architecture, " needs d_model = n_heads * head_dim, got ", d_model, " != ", n_heads,
            " * ", head_dim);
    in(d_ff, 1, kMaxDim * 16, "d_ff");
    check(std::isfinite(norm_eps) && norm_eps > 0 && norm_eps <= 1, where, "norm_eps must be in (0, 1], got ", norm_eps);
    in(max_positions, 1, Index(std::numeric_limits<std::int32_t>::max()), "max_positions");
    in(type_vocab_size, 0, kMaxDim, "type_vocab_size");
    in(sliding_window, 0, Index(std::numeric_limits<std::int32_t>::max()), "sliding_window");
    check(sliding_window == 0 || causal, where, "a sliding window needs a causal model");
    if (positions == PositionKind::rope) {
      check(head_dim % 2 == 0, where, "RoPE needs an even head_dim, got ", head_dim);
      check(std::isfinite(rope_theta) && rope_theta > 0, where, "rope_theta must be finite and positive, got ", rope_theta);
      validate_rope_scaling(rope_scaling, head_dim);
    }
    (void)weight_elements();
  }

  /// Throws Error unless every frequency `s` produces is finite and positive (core/ops.hpp rope_inv_freq).
  static void validate_rope_scaling(const RopeScaling& s, Index head_dim) {
    const char* where = "ModelConfig rope_scaling";
    if (s.kind == RopeScaling::Kind::none) return;
    check(std::isfinite(s.factor) && s.factor > 0, where, "factor must be finite and positive, got ", s.factor);
    if (s.kind == RopeScaling::Kind::ntk) {
      check(head_dim > 2, where, "NTK scaling needs head_dim > 2, got ", head_dim);
      // base' = theta * (alpha * factor - (alpha - 1))^(d / (d - 2)): the bracket must be positive.
      check(std::isfinite(s.alpha) && s.alpha > 0, where, "NTK alpha must be finite and positive, got ", s.alpha);
      const double m = s.alpha * s.factor - (s.alpha - 1.0);
      check(std::isfinite(m) && m > 0, where, "NTK alpha * factor - (alpha - 1) must be positive, got ", m, " (alpha ", s.alpha,
            ", factor ", s.factor, ")");
    }
    if (s.kind == RopeScaling::Kind::llama3) {
      check(std::isfinite(s.low_freq_factor) && s.low_freq_factor > 0, where, "low_freq_factor must be finite and positive, got ",
            s.low_freq_factor);
      check(std::isfinite(s.high_freq_factor) && s.high_freq_factor > s.low_freq_factor, where, "high_freq_factor (",
            s.high_freq_factor, ") must be finite and greater than low_freq_factor (", s.low_freq_factor, ")");
      check(std::isfinite(s.original_max_positions) && s.original_max_positions >= 1, where,
            "original_max_position_embeddings must be finite and >= 1, got ", s.original_max_positions);
    }
  }

  /// Elements of the weight matrices and tables the model allocates (embeddings, positions, token
  /// types, attention and MLP projections, untied head; norms and biases are left out): a lower
  /// bound of what a matching checkpoint holds. Throws Error when it would overflow.
  std::uint64_t weight_elements() const {
    const char* where = "ModelConfig";
    auto mul = [&](std::uint64_t a, std::uint64_t b) {
      std::uint64_t r = 0;
      check(!__builtin_mul_overflow(a, b, &r), where, "the weight count overflows (", a, " x ", b, ")");
      return r;
    };
    auto add = [&](std::uint64_t a, std::uint64_t b) {
      std::uint64_t r = 0;
      check(!__builtin_add_overflow(a, b, &r), where, "the weight count overflows");
      return r;
    };
    const std::uint64_t C = std::uint64_t(std::max<Index>(d_model, 0)), H = std::uint64_t(std::max<Index>(n_heads, 0)),
                        K = std::uint64_t(std::max<Index>(n_kv_heads, 0)), D = std::uint64_t(std::max<Index>(head_dim, 0)),
                        F = std::uint64_t(std::max<Index>(d_ff, 0)), V = std::uint64_t(std::max<Index>(vocab_size, 0));
    std::uint64_t layer = add(mul(mul(add(H, mul(2, K)), D), C), mul(mul(H, D), C));  // qkv + out
    layer = add(layer, mul(mul(mlp == MlpKind::gated ? 3 : 2, F), C));                 // up (+ gate) + down
    std::uint64_t n = add(mul(V, C), mul(std::uint64_t(std::max<Index>(n_layers, 0)), layer));
    if (positions == PositionKind::learned) n = add(n, mul(std::uint64_t(std::max<Index>(max_positions, 0)), C));
    n = add(n, mul(std::uint64_t(std::max<Index>(type_vocab_size, 0)), C));
    if (!tie_embeddings) n = add(n, mul(V, C));
    return n;
  }

  /// Bytes one cached token costs in a full KV cache of scalars of `scalar_bytes` bytes (keys and
  /// values of every layer and KV head, rows padded to 64 bytes, plus its position).
  std::uint64_t kv_bytes_per_token(std::size_t scalar_bytes) const {
    const std::uint64_t row = (std::uint64_t(head_dim) * scalar_bytes + 63) / 64 * 64;
    return std::uint64_t(n_layers) * std::uint64_t(n_kv_heads) * (2 * row + sizeof(std::int64_t));
  }

  /// Llama family: RMSNorm, rotate-half RoPE, GQA, SwiGLU, no biases.
  static ModelConfig llama(Index vocab, Index d_model, Index n_layers, Index n_heads, Index n_kv_heads, Index d_ff) {
    ModelConfig c;
    c.architecture = "llama";
    c.vocab_size = vocab;
    c.d_model = d_model;
    c.n_layers = n_layers;
    c.n_heads = n_heads;
    c.n_kv_heads = n_kv_heads;
    c.head_dim = preset_head_dim(d_model, n_heads);
    c.d_ff = d_ff;
    return c;
  }
  /// GPT-2: LayerNorm, learned positions, GELU (tanh) MLP, biases, tied head.
  static ModelConfig gpt2(Index vocab, Index d_model, Index n_layers, Index n_heads, Index max_positions) {
    ModelConfig c;
    c.architecture = "gpt2";
    c.vocab_size = vocab;
    c.d_model = d_model;
    c.n_layers = n_layers;
    c.n_heads = c.n_kv_heads = n_heads;
    c.head_dim = preset_head_dim(d_model, n_heads);
    c.d_ff = 4 * d_model;
    c.norm = NormKind::layer;
    c.mlp = MlpKind::plain;
    c.activation = Activation::gelu_tanh;
    c.qkv_bias = c.out_bias = c.mlp_bias = true;
    c.positions = PositionKind::learned;
    c.max_positions = max_positions;
    c.tie_embeddings = true;
    return c;
  }
  /// BERT encoder: post-LN, exact GELU, learned positions, token types, embedding LayerNorm, bidirectional.
  static ModelConfig bert(Index vocab, Index d_model, Index n_layers, Index n_heads, Index d_ff, Index max_positions) {
    ModelConfig c = gpt2(vocab, d_model, n_layers, n_heads, max_positions);
    c.architecture = "bert";
    c.d_ff = d_ff;
    c.norm_eps = 1e-12;
    c.placement = NormPlacement::post;
    c.activation = Activation::gelu_erf;
    c.causal = false;
    c.final_norm = false;
    c.embedding_norm = true;
    c.type_vocab_size = 2;
    return c;
  }

 private:
  // d_model / n_heads when that divides; 0 otherwise, which validate() reports with both numbers
  // (the presets never divide by zero, nor truncate a width silently).
  static Index preset_head_dim(Index d_model, Index n_heads) {
    return n_heads > 0 && d_model > 0 && d_model % n_heads == 0 ? d_model / n_heads : 0;
  }
};

ENGRAM_NAMESPACE_END
