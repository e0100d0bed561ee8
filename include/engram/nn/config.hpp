// ModelConfig: the shape and flavour of a transformer stack (Llama, GPT-2, BERT and relatives).
#pragma once

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

/// Everything that fixes the shapes and the arithmetic of a model. Presets: llama(), gpt2(), bert().
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

  Index qkv_dim() const { return (n_heads + 2 * n_kv_heads) * head_dim; }

  /// Throws Error naming the first field out of range.
  void validate() const {
    const char* where = "ModelConfig";
    check(vocab_size > 0, where, "vocab_size must be positive, got ", vocab_size);
    check(d_model > 0, where, "d_model must be positive, got ", d_model);
    check(n_layers >= 0, where, "n_layers must be >= 0, got ", n_layers);
    check(n_heads > 0, where, "n_heads must be positive, got ", n_heads);
    check(n_kv_heads > 0 && n_heads % n_kv_heads == 0, where, "n_kv_heads must divide n_heads (", n_heads, "), got ", n_kv_heads);
    check(head_dim > 0, where, "head_dim must be positive, got ", head_dim);
    check(d_ff > 0, where, "d_ff must be positive, got ", d_ff);
    check(norm_eps >= 0, where, "norm_eps must be >= 0, got ", norm_eps);
    check(max_positions > 0, where, "max_positions must be positive, got ", max_positions);
    if (positions == PositionKind::rope) {
      check(head_dim % 2 == 0, where, "RoPE needs an even head_dim, got ", head_dim);
      check(rope_theta > 0, where, "rope_theta must be positive, got ", rope_theta);
    }
    check(type_vocab_size >= 0, where, "type_vocab_size must be >= 0");
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
    c.head_dim = d_model / n_heads;
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
    c.head_dim = d_model / n_heads;
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
};

ENGRAM_NAMESPACE_END
