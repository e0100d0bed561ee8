// Initialisation of a TTT model for training, as the reference recipe (ttt.md 1.2, 2, 6.1): the
// shared decoder init (nn/init.hpp) for embeddings, projections, SwiGLU and norms, then the TTT
// layer's own values: inner W1 (W2) N(0, std), b1 (b2) 0, ttt_norm ones/zeros, learnable_token_idx 0,
// the lr gate's weight N(0, std) and bias 0, and the convolutions as torch's Conv1d default.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

#include "engram/nn/init.hpp"
#include "engram/ttt/model.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

namespace detail {
// torch.nn.Conv1d's default for a depthwise kernel of K taps: kaiming_uniform(a = sqrt(5)) on the
// weight and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on the bias, fan_in = K; both bounds are 1/sqrt(K).
template <class T>
void init_conv(DepthwiseConv<T>& conv, std::mt19937_64& rng) {
  const double bound = 1.0 / std::sqrt(double(conv.kernel()));
  std::uniform_real_distribution<double> uniform(-bound, bound);
  for (Index r = 0; r < conv.weight.rows(); ++r)
    for (Index c = 0; c < conv.weight.cols(); ++c) conv.weight(r, c) = T(uniform(rng));
  for (Index c = 0; c < conv.bias.numel(); ++c) conv.bias.data()[c] = T(uniform(rng));
}
}  // namespace detail

/// Initialises a TTT decoder (from make_decoder) for training, seeded: every matrix N(0, std^2)
/// (embeddings, q/k/v/g projections, the lr gate's weight, W1, W2, SwiGLU), the projections that
/// write into the residual stream (o_proj, SwiGLU down) N(0, (std / sqrt(2 L))^2) as
/// engram::init_for_training, norm scales 1 (seq/ffn/conv RMSNorms, post_norm, ttt_norm), shifts and
/// biases 0 (b1, b2, the lr gate's bias), learnable_token_idx 0 (so the token scale starts at
/// 1/(i+1)), conv_q, conv_k and the pre-conv branch as torch's Conv1d default.
template <class T>
void init_for_training(Decoder<T>& model, std::uint64_t seed, double std = 0.02) {
  check(model.config.architecture == "ttt", "ttt::init_for_training", "expected a TTT decoder (from ttt::make_decoder), got architecture \"",
        model.config.architecture, "\"");
  engram::init_for_training(model, seed, std);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);  // the convolutions' own stream
  for (Block<T>& block : model.blocks)
    for (Branch<T>& br : block.branches) {
      if (auto* conv = dynamic_cast<CausalConv<T>*>(br.layer.get())) detail::init_conv(conv->conv, rng);
      auto* layer = dynamic_cast<Layer<T>*>(br.layer.get());
      if (!layer) continue;
      layer->token_idx.fill(T(0));
      layer->lr_bias.fill(T(0));
      layer->b1.fill(T(0));
      if (layer->config.kind == Kind::mlp) layer->b2.fill(T(0));
      layer->ttt_norm_weight.fill(T(1));
      layer->ttt_norm_bias.fill(T(0));
      layer->post_norm.weight.fill(T(1));
      layer->post_norm.bias.fill(T(0));
      if (layer->config.share_qk) {
        detail::init_conv(layer->conv_q, rng);
        detail::init_conv(layer->conv_k, rng);
      }
    }
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
