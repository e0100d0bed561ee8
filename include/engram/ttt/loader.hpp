// Loading ttt-lm-pytorch checkpoints: TTTConfig keys from config.json (ttt.md 6.2) and the
// TTTForCausalLM state_dict names (ttt.md 6.1) into a Decoder with TTT blocks.
#pragma once

#include <filesystem>
#include <string>

#include "engram/io/hf.hpp"
#include "engram/ttt/model.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// ModelSpec from a parsed ttt-lm-pytorch config.json (model_type "ttt"). Missing keys take the
/// TTTConfig defaults; values out of range throw Error naming the key.
inline ModelSpec config_from_json(const json::Value& cfg) {
  using hf::detail::get_bool;
  using hf::detail::get_int;
  using hf::detail::get_num;
  using hf::detail::get_str;
  const char* where = "config.json";
  check(cfg.is_object(), where, "expected a JSON object");
  const std::string type = get_str(cfg, "model_type", "ttt");
  check(type == "ttt", where, "model_type \"", type, "\" is not a TTT model (expected \"ttt\")");
  ModelSpec s;
  Config& c = s.layer;
  c.d_model = get_int(cfg, "hidden_size", 2048);
  c.n_heads = get_int(cfg, "num_attention_heads", 32);
  c.mini_batch = get_int(cfg, "mini_batch_size", 16);
  const std::string kind = get_str(cfg, "ttt_layer_type", "linear");
  if (kind == "linear") c.kind = Kind::linear;
  else if (kind == "mlp") c.kind = Kind::mlp;
  else fail(where, "ttt_layer_type must be \"linear\" or \"mlp\", got \"", kind, "\"");
  c.base_lr = get_num(cfg, "ttt_base_lr", 1.0);
  c.rope_theta = get_num(cfg, "rope_theta", 10000.0);
  c.share_qk = get_bool(cfg, "share_qk", false);
  c.use_gate = get_bool(cfg, "use_gate", false);
  c.pre_conv = get_bool(cfg, "pre_conv", false);
  c.conv_kernel = get_int(cfg, "conv_kernel", 4);
  const std::string act = get_str(cfg, "hidden_act", "silu");
  check(act == "silu", where, "hidden_act must be \"silu\" (the SwiGLU feed-forward of TTT blocks), got \"", act, "\"");
  s.vocab_size = get_int(cfg, "vocab_size", 32000);
  s.n_layers = get_int(cfg, "num_hidden_layers", 24);
  s.d_ff = get_int(cfg, "intermediate_size", 5504);
  s.rms_eps = get_num(cfg, "rms_norm_eps", 1e-6);
  s.tie_embeddings = get_bool(cfg, "tie_word_embeddings", true);
  // Each check names the config key (ttt::Config::validate uses the same names).
  check(c.d_model > 0 && c.n_heads > 0 && c.d_model % c.n_heads == 0, where, "hidden_size (", c.d_model,
        ") must be a positive multiple of num_attention_heads (", c.n_heads, ")");
  check(c.mini_batch > 0, where, "mini_batch_size must be positive, got ", c.mini_batch);
  check(c.conv_kernel > 0, where, "conv_kernel must be positive, got ", c.conv_kernel);
  s.validate();
  return s;
}

/// Binds one block's tensors under `prefix` (e.g. "model.layers.3.") into a block from make_block.
template <class T>
void bind_block(hf::WeightBinder<T>& b, const std::string& prefix, const ModelSpec& spec, Block<T>& block) {
  const Config& c = spec.layer;
  const std::int64_t C = c.d_model, H = c.n_heads, d = c.head_dim(), F = c.inner_dim(), I = spec.d_ff,
                     K = c.conv_kernel, B = c.mini_batch;
  std::size_t branch = 0;
  if (c.pre_conv) {
    Branch<T>& br = block.branches.at(branch++);
    auto& conv = dynamic_cast<CausalConv<T>&>(*br.layer);
    b.rows_into(prefix + "conv.norm.weight", {C}, br.norm.weight);
    b.rows_into(prefix + "conv.conv.weight", {C, 1, K}, conv.conv.weight, 0, /*transpose=*/true);  // -> [K, C]
    b.rows_into(prefix + "conv.conv.bias", {C}, conv.conv.bias);
  }
  Branch<T>& seq = block.branches.at(branch++);
  auto& layer = dynamic_cast<Layer<T>&>(*seq.layer);
  const std::string p = prefix + "seq_modeling_block.";
  b.rows_into(prefix + "seq_norm.weight", {C}, seq.norm.weight);
  b.rows_into(p + "q_proj.weight", {C, C}, layer.proj.weight, layer.q_col());
  if (!c.share_qk) b.rows_into(p + "k_proj.weight", {C, C}, layer.proj.weight, layer.k_col());
  b.rows_into(p + "v_proj.weight", {C, C}, layer.proj.weight, layer.v_col());
  if (c.use_gate) b.rows_into(p + "g_proj.weight", {C, C}, layer.proj.weight, layer.g_col());
  b.rows_into(p + "learnable_ttt_lr_weight", {H, 1, C}, layer.proj.weight, layer.lr_col());
  b.rows_into(p + "learnable_ttt_lr_bias", {H, 1}, layer.lr_bias);
  b.rows_into(p + "learnable_token_idx", {B}, layer.token_idx);
  b.rows_into(p + "ttt_norm_weight", {H, d}, layer.ttt_norm_weight);
  b.rows_into(p + "ttt_norm_bias", {H, d}, layer.ttt_norm_bias);
  b.rows_into(p + "W1", {H, d, F}, layer.W1);
  b.rows_into(p + "b1", {H, 1, F}, layer.b1);
  if (c.kind == Kind::mlp) {
    b.rows_into(p + "W2", {H, F, d}, layer.W2);
    b.rows_into(p + "b2", {H, 1, d}, layer.b2);
  }
  if (c.share_qk) {
    b.rows_into(p + "conv_q.weight", {C, 1, K}, layer.conv_q.weight, 0, true);
    b.rows_into(p + "conv_q.bias", {C}, layer.conv_q.bias);
    b.rows_into(p + "conv_k.weight", {C, 1, K}, layer.conv_k.weight, 0, true);
    b.rows_into(p + "conv_k.bias", {C}, layer.conv_k.bias);
  }
  b.rows_into(p + "post_norm.weight", {C}, layer.post_norm.weight);
  b.rows_into(p + "post_norm.bias", {C}, layer.post_norm.bias);
  b.rows_into(p + "o_proj.weight", {C, C}, layer.o_proj.weight);
  Branch<T>& ffn = block.branches.at(branch++);
  auto& mlp = dynamic_cast<Mlp<T>&>(*ffn.layer);
  b.rows_into(prefix + "ffn_norm.weight", {C}, ffn.norm.weight);
  b.rows_into(prefix + "mlp.gate_proj.weight", {I, C}, mlp.up.weight, 0);
  b.rows_into(prefix + "mlp.up_proj.weight", {I, C}, mlp.up.weight, I);
  b.rows_into(prefix + "mlp.down_proj.weight", {C, I}, mlp.down.weight);
}

/// Loads a ttt-lm-pytorch TTTForCausalLM checkpoint directory (config.json + model.safetensors,
/// single or sharded; F32, F16 or BF16). One Error names every missing, unexpected or mis-shaped
/// tensor.
template <class T>
Decoder<T> load_decoder(const std::filesystem::path& dir) {
  const ModelSpec spec = config_from_json(read_json_file(dir / "config.json"));
  Decoder<T> m = make_decoder<T>(spec);
  const Checkpoint ck = Checkpoint::open(dir);
  hf::WeightBinder<T> b(ck, dir.string());
  const std::int64_t V = spec.vocab_size, C = spec.layer.d_model;
  b.rows_into("model.embed_tokens.weight", {V, C}, m.embed.weight);
  for (Index l = 0; l < spec.n_layers; ++l)
    bind_block<T>(b, "model.layers." + std::to_string(l) + ".", spec, m.blocks[std::size_t(l)]);
  b.rows_into("model.norm.weight", {C}, m.final_norm.weight);
  if (!spec.tie_embeddings) b.rows_into("lm_head.weight", {V, C}, m.lm_head.weight);
  const bool tied = spec.tie_embeddings;
  // Non-persistent buffers some exports still carry, and a tied head's stored copy.
  b.ignore_if([tied](const std::string& n) {
    return hf::detail::ends_with(n, ".rotary_emb.inv_freq") || hf::detail::ends_with(n, "seq_modeling_block.token_idx") ||
           (tied && n == "lm_head.weight");
  });
  b.finish();
  return m;
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
