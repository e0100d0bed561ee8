// Shared by the TTT test files: the layer config of a PyTorch reference fixture, read from its
// safetensors __metadata__ (written by tests/reference/make_ttt_fixtures.py).
#pragma once

#include <map>
#include <string>

#include "engram/ttt/loader.hpp"

namespace engram::test {

/// The one-block model spec of a fixture's metadata.
inline ttt::ModelSpec spec_from_metadata(const std::map<std::string, std::string>& md) {
  ttt::ModelSpec s;
  ttt::Config& c = s.layer;
  c.d_model = std::stoi(md.at("hidden_size"));
  c.n_heads = std::stoi(md.at("num_attention_heads"));
  c.mini_batch = std::stoi(md.at("mini_batch_size"));
  c.kind = md.at("ttt_layer_type") == "mlp" ? ttt::Kind::mlp : ttt::Kind::linear;
  c.base_lr = std::stod(md.at("ttt_base_lr"));
  c.rope_theta = std::stod(md.at("rope_theta"));
  c.share_qk = md.at("share_qk") == "true";
  c.use_gate = md.at("use_gate") == "true";
  c.pre_conv = md.at("pre_conv") == "true";
  c.conv_kernel = std::stoi(md.at("conv_kernel"));
  s.vocab_size = 1;
  s.n_layers = 1;
  s.d_ff = std::stoi(md.at("intermediate_size"));
  s.rms_eps = std::stod(md.at("rms_norm_eps"));
  return s;
}

}  // namespace engram::test
