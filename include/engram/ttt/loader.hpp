// Loading ttt-lm-pytorch checkpoints: TTTConfig keys from config.json (ttt.md 6.2) and the
// TTTForCausalLM state_dict names (ttt.md 6.1) into a Decoder with TTT blocks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include "engram/io/hf.hpp"
#include "engram/ttt/model.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace ttt {

/// ModelSpec from a parsed ttt-lm-pytorch config.json (model_type "ttt"). The shape keys are
/// required (hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, vocab_size: a
/// config without them is an Error, never silently the 1.3B shape); the others take the TTTConfig
/// defaults (mini_batch_size 16, ttt_layer_type "linear", ttt_base_lr 1.0, rope_theta 10000,
/// share_qk/use_gate/pre_conv false, conv_kernel 4, rms_norm_eps 1e-6, tie_word_embeddings true).
/// Every value is range-checked as it is read; an Error names `source`, the key and the value.
inline ModelSpec config_from_json(const json::Value& cfg, const std::string& source = "config.json") {
  const io::ConfigReader r(cfg, source);
  const std::string type = r.string("model_type", std::string("ttt"));
  check(type == "ttt", source, "model_type \"", type, "\" is not a TTT model (expected \"ttt\")");
  constexpr Index kMax = Config::kMaxDim;
  ModelSpec s;
  Config& c = s.layer;
  c.d_model = r.integer("hidden_size", 1, kMax);
  c.n_heads = r.integer("num_attention_heads", 1, kMax);
  if (c.d_model % c.n_heads != 0) r.bad("num_attention_heads", "must divide \"hidden_size\" = " + std::to_string(c.d_model));
  if (c.head_dim() % 2 != 0) r.bad("num_attention_heads", "head_dim = hidden_size / num_attention_heads must be even for RoPE, got " + std::to_string(c.head_dim()));
  c.mini_batch = r.integer("mini_batch_size", 1, 1 << 16, 16);
  c.kind = r.string("ttt_layer_type", std::string("linear"), {"linear", "mlp"}) == "linear" ? Kind::linear : Kind::mlp;
  c.base_lr = r.number("ttt_base_lr", 0.0, 1e6, 1.0);
  c.rope_theta = r.number("rope_theta", 0.0, 1e15, 10000.0, /*lo_open=*/true);
  c.share_qk = r.boolean("share_qk", false);
  c.use_gate = r.boolean("use_gate", false);
  c.pre_conv = r.boolean("pre_conv", false);
  c.conv_kernel = r.integer("conv_kernel", 1, 1 << 16, 4);
  (void)r.string("hidden_act", std::string("silu"), {"silu"});  // the SwiGLU feed-forward of TTT blocks
  s.vocab_size = r.integer("vocab_size", 1, std::numeric_limits<std::int32_t>::max());
  s.n_layers = r.integer("num_hidden_layers", 0, kMax);
  s.d_ff = r.integer("intermediate_size", 1, 16 * kMax);
  s.rms_eps = r.number("rms_norm_eps", 0.0, 1.0, 1e-6, true);
  s.tie_embeddings = r.boolean("tie_word_embeddings", true);
  try {
    s.validate();
    s.decoder_config().validate();
  } catch (const Error& e) {
    fail(source, e.what());
  }
  return s;
}

/// The size budget of a TTT model: weight matrices (embeddings, projections, inner weights, SwiGLU,
/// untied head; norms, biases and convolutions left out, so a matching checkpoint holds at least
/// this many elements) as T, no KV cache (the state is the inner model, per layer H d F).
template <class T>
io::ModelSize model_size(const ModelSpec& s) {
  const Config& c = s.layer;
  const char* where = "ttt::model_size";
  auto mul = [&](std::uint64_t a, std::uint64_t b) { return io::checked_mul(a, b, where); };
  auto add = [&](std::uint64_t a, std::uint64_t b) { return io::checked_add(a, b, where); };
  const std::uint64_t C = std::uint64_t(c.d_model), V = std::uint64_t(s.vocab_size), I = std::uint64_t(s.d_ff);
  // Per layer: q, v, o (+ k unless shared, + g with the gate) [C, C]; W1 (and W2) [H, d, F]; SwiGLU 3 [I, C].
  const std::uint64_t proj = mul(3 + (c.share_qk ? 0 : 1) + (c.use_gate ? 1 : 0), mul(C, C));
  const std::uint64_t inner = mul(c.kind == Kind::mlp ? 2 : 1, mul(mul(std::uint64_t(c.n_heads), std::uint64_t(c.head_dim())), std::uint64_t(c.inner_dim())));
  const std::uint64_t layer = add(add(proj, inner), mul(3, mul(I, C)));
  std::uint64_t n = add(mul(V, C), mul(std::uint64_t(s.n_layers), layer));
  if (!s.tie_embeddings) n = add(n, mul(V, C));
  return {n, sizeof(T), 0};
}

/// Names one block's tensors under `prefix` (e.g. "model.layers.3.") for a block from make_block, in
/// both directions: with an hf::WeightBinder it loads them, with an hf::WeightExporter
/// (ttt/save.hpp) it writes them, so the loader and the saver share one name table.
template <class T, class Binder>
void bind_block(Binder& b, const std::string& prefix, const ModelSpec& spec, Block<T>& block) {
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

/// Names every tensor of a TTT model (TTTForCausalLM's state_dict) for `b` (a loader or a saver).
template <class T, class Binder>
void bind_model(Binder& b, const ModelSpec& spec, Decoder<T>& m) {
  const std::int64_t V = spec.vocab_size, C = spec.layer.d_model;
  b.rows_into("model.embed_tokens.weight", {V, C}, m.embed.weight);
  for (Index l = 0; l < spec.n_layers; ++l)
    bind_block<T>(b, "model.layers." + std::to_string(l) + ".", spec, m.blocks[std::size_t(l)]);
  b.rows_into("model.norm.weight", {C}, m.final_norm.weight);
  if (!spec.tie_embeddings) b.rows_into("lm_head.weight", {V, C}, m.lm_head.weight);
}

/// Loads a ttt-lm-pytorch TTTForCausalLM checkpoint: `cfg` its parsed config.json, `ck` its
/// safetensors (single or sharded; F32, F16 or BF16), `source` its name in errors. The config is
/// validated and the size budget checked before anything is allocated; one Error names every
/// missing, unexpected, mis-shaped or non-finite tensor.
template <class T>
Decoder<T> load_decoder(const json::Value& cfg, const Checkpoint& ck, const std::string& source) {
  const std::string config_source = (std::filesystem::path(source) / "config.json").string();
  const ModelSpec spec = config_from_json(cfg, config_source);
  io::check_model_size(model_size<T>(spec), &ck, config_source);  // before anything is allocated
  Decoder<T> m = make_decoder<T>(spec);
  hf::WeightBinder<T> b(ck, source);
  bind_model<T>(b, spec, m);
  const bool tied = spec.tie_embeddings;
  // Non-persistent buffers some exports still carry, and a tied head's stored copy.
  b.ignore_if([tied](const std::string& n) {
    return hf::detail::ends_with(n, ".rotary_emb.inv_freq") || hf::detail::ends_with(n, "seq_modeling_block.token_idx") ||
           (tied && n == "lm_head.weight");
  });
  b.finish();
  return m;
}

/// load_decoder from a checkpoint directory (config.json + safetensors).
template <class T>
Decoder<T> load_decoder(const std::filesystem::path& dir) {
  const json::Value cfg = read_json_file(dir / "config.json");
  return load_decoder<T>(cfg, Checkpoint::open(dir), dir.string());
}

}  // namespace ttt
ENGRAM_NAMESPACE_END
