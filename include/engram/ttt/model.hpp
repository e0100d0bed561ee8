// A TTT language model is the shared Decoder with TTT blocks: [(conv.norm, conv)?, (seq_norm, TTT),
// (ffn_norm, SwiGLU)] (ttt.md 4.2), embeddings, a final RMSNorm and a (tied) head; no positions.
#pragma once

#include <memory>

#include "engram/nn/decoder.hpp"
#include "engram/ttt/causal_conv.hpp"
#include "engram/ttt/layer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// Everything a TTT model needs beyond its layer config (TTTConfig's model-level keys).
struct ModelSpec {
  Config layer;
  Index vocab_size = 0;
  Index n_layers = 0;
  Index d_ff = 0;           ///< intermediate_size of the SwiGLU feed-forward
  double rms_eps = 1e-6;
  bool tie_embeddings = true;

  void validate() const {
    layer.validate();
    check(vocab_size > 0, "ttt::ModelSpec", "vocab_size must be positive, got ", vocab_size);
    check(n_layers >= 0, "ttt::ModelSpec", "num_hidden_layers must be >= 0, got ", n_layers);
    check(d_ff > 0, "ttt::ModelSpec", "intermediate_size must be positive, got ", d_ff);
    check(rms_eps >= 0, "ttt::ModelSpec", "rms_norm_eps must be >= 0, got ", rms_eps);
  }

  /// The Decoder's view of the model (positions none: the TTT layers rotate internally).
  ModelConfig decoder_config() const {
    ModelConfig c;
    c.architecture = "ttt";
    c.vocab_size = vocab_size;
    c.d_model = layer.d_model;
    c.n_layers = n_layers;
    c.n_heads = c.n_kv_heads = layer.n_heads;
    c.head_dim = layer.head_dim();
    c.d_ff = d_ff;
    c.norm = NormKind::rms;
    c.norm_eps = rms_eps;
    c.mlp = MlpKind::gated;
    c.activation = Activation::silu;
    c.positions = PositionKind::none;
    c.tie_embeddings = tie_embeddings;
    return c;
  }
};

/// One TTT block with zero weights and unit norms. Branch indices: with pre_conv 0 = conv,
/// 1 = TTT, 2 = MLP; without, 0 = TTT, 1 = MLP.
template <class T>
Block<T> make_block(const ModelSpec& spec) {
  spec.validate();
  const Config& c = spec.layer;
  Block<T> b;
  b.placement = NormPlacement::pre;
  if (c.pre_conv)
    b.branches.push_back({Norm<T>(NormKind::rms, c.d_model, spec.rms_eps), std::make_unique<CausalConv<T>>(c.d_model, c.conv_kernel)});
  b.branches.push_back({Norm<T>(NormKind::rms, c.d_model, spec.rms_eps), std::make_unique<Layer<T>>(c)});
  b.branches.push_back({Norm<T>(NormKind::rms, c.d_model, spec.rms_eps),
                        std::make_unique<Mlp<T>>(MlpKind::gated, Activation::silu, c.d_model, spec.d_ff, false)});
  return b;
}

/// The TTT branch of a block.
template <class T>
Layer<T>& ttt_layer(Block<T>& block) {
  for (Branch<T>& br : block.branches)
    if (auto* l = dynamic_cast<Layer<T>*>(br.layer.get())) return *l;
  fail("ttt::ttt_layer", "block has no TTT branch");
}

/// A TTT language model with zero weights (load or initialise them next).
template <class T>
Decoder<T> make_decoder(const ModelSpec& spec) {
  spec.validate();
  ModelConfig c = spec.decoder_config();
  c.n_layers = 0;  // Decoder::create would build attention blocks; ours follow
  Decoder<T> m = Decoder<T>::create(c);
  m.config.n_layers = spec.n_layers;
  for (Index l = 0; l < spec.n_layers; ++l) m.blocks.push_back(make_block<T>(spec));
  return m;
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
