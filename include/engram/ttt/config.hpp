// TTT layer configuration (ttt-lm-pytorch TTTConfig semantics) and its validation.
#pragma once

#include <cmath>

#include "engram/core/config.hpp"
#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// The inner model f_res: TTT-Linear (x W1 + b1) or TTT-MLP (gelu(x W1 + b1) W2 + b2, 4x expansion).
enum class Kind { linear, mlp };

/// How a layer runs its inner loop. `dual` uses the dual form for every whole, aligned mini-batch and
/// the primal form for partial mini-batches and decode; `primal` uses the primal form everywhere
/// (the baseline of the benchmarks; results agree to rounding).
enum class InnerForm { dual, primal };

/// Shape and flavour of one TTT layer (ttt.md sections 1, 2, 4).
struct Config {
  Index d_model = 0;          ///< C
  Index n_heads = 0;          ///< H; head_dim d = C / H
  Index mini_batch = 16;      ///< b: gradients of a mini-batch are taken at the weights of its start
  Kind kind = Kind::linear;
  double base_lr = 1.0;       ///< eta_base: 1.0 for TTT-Linear, 0.1 for TTT-MLP in the paper
  double rope_theta = 10000.0;
  bool share_qk = false;      ///< Mamba backbone: one q_proj feeding separate conv_q and conv_k
  bool use_gate = false;      ///< Mamba backbone: output gated by gelu_tanh(g_proj(x))
  bool pre_conv = false;      ///< Mamba backbone: a causal-conv residual branch before the TTT branch
  Index conv_kernel = 4;
  double inner_eps = 1e-6;      ///< eps of the inner LayerNorm (fixed in the official code)
  double post_norm_eps = 1e-6;  ///< eps of post_norm (fixed in the official code)

  /// Hidden width of TTT-MLP relative to head_dim (fixed in the official code).
  static constexpr Index kMlpExpansion = 4;

  Index head_dim() const { return n_heads > 0 ? d_model / n_heads : 0; }
  /// F: output width of the first inner layer (d for TTT-Linear, 4d for TTT-MLP).
  Index inner_dim() const { return kind == Kind::linear ? head_dim() : kMlpExpansion * head_dim(); }

  /// The Transformer backbone "(T)": separate q/k projections, no gate, no pre-conv.
  static Config transformer(Kind k, Index d_model, Index n_heads) {
    Config c;
    c.kind = k;
    c.d_model = d_model;
    c.n_heads = n_heads;
    c.base_lr = k == Kind::linear ? 1.0 : 0.1;
    return c;
  }
  /// The Mamba backbone "(M)" (the paper's default): shared q/k projection with convs, gate, pre-conv.
  static Config mamba(Kind k, Index d_model, Index n_heads) {
    Config c = transformer(k, d_model, n_heads);
    c.share_qk = c.use_gate = c.pre_conv = true;
    return c;
  }

  /// Largest width, head count or mini-batch validate() accepts: far beyond any real model, small
  /// enough that the weight count of a layer cannot overflow.
  static constexpr Index kMaxDim = Index(1) << 20;

  /// Throws Error naming the first value out of range.
  void validate() const {
    const char* where = "ttt::Config";
    check(d_model > 0 && d_model <= kMaxDim, where, "hidden_size must be in [1, ", kMaxDim, "], got ", d_model);
    check(n_heads > 0 && n_heads <= d_model, where, "num_attention_heads must be in [1, hidden_size = ", d_model, "], got ", n_heads);
    check(d_model % n_heads == 0, where, "hidden_size ", d_model, " is not a multiple of num_attention_heads ", n_heads);
    check(head_dim() % 2 == 0, where, "head_dim = hidden_size / num_attention_heads must be even for RoPE, got ",
          head_dim());
    check(mini_batch > 0 && mini_batch <= kMaxDim, where, "mini_batch_size must be in [1, ", kMaxDim, "], got ", mini_batch);
    check(std::isfinite(base_lr) && base_lr >= 0, where, "ttt_base_lr must be finite and >= 0, got ", base_lr);
    check(std::isfinite(rope_theta) && rope_theta > 0, where, "rope_theta must be positive, got ", rope_theta);
    check((conv_kernel > 0 && conv_kernel <= kMaxDim) || !(share_qk || pre_conv), where, "conv_kernel must be in [1, ", kMaxDim,
          "], got ", conv_kernel);
    check(std::isfinite(inner_eps) && inner_eps > 0 && std::isfinite(post_norm_eps) && post_norm_eps > 0, where,
          "LayerNorm eps must be finite and positive, got ", inner_eps, " and ", post_norm_eps);
  }
};

}  // namespace ttt
ENGRAM_NAMESPACE_END
