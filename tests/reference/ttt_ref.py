#!/usr/bin/python3
"""Independent PyTorch reference for TTT-Linear / TTT-MLP ("Learning to (Learn at Test Time)").

Written from the specification /work/shared/reference/ttt.md (no code from the official repositories).
It generates the golden fixtures that the C++ port (engram) is tested against.

Regenerate (deterministic, CPU, float64, takes a few seconds):

    /usr/bin/python3 tests/reference/ttt_ref.py          # run from the repository root

Requires only torch (Debian python3-torch 1.13) and numpy.  Every self-check is asserted and printed.

==========================================================================================================
CONTRACT
==========================================================================================================

All files are safetensors: u64-LE header length N (N % 8 == 0, JSON padded with spaces), JSON header,
tensors stored contiguously (row-major, little-endian) in a data buffer, data_offsets relative to that
buffer.  dtypes: F32 (all float tensors) and I64 (token ids).  Parameters and inputs were DRAWN in float32
and stored exactly; all computation was done in float64 from those float32 values; outputs are rounded to
float32 for storage.  Batch size is 1 and the batch dimension is dropped everywhere.

----------------------------------------------------------------------------------------------------------
1) Layer fixtures  tests/fixtures/ttt/ttt_{linear,mlp}_{T,M}.safetensors
----------------------------------------------------------------------------------------------------------
__metadata__ (all values are strings; bools are "true"/"false"; floats use Python repr):
    hidden_size=32  num_attention_heads=4  intermediate_size=64  mini_batch_size=16  rope_theta=10000.0
    ttt_layer_type=linear|mlp  ttt_base_lr=1.0 (linear) | 0.1 (mlp)  rms_norm_eps=1e-06  conv_kernel=4
    share_qk, use_gate, pre_conv = false,false,false (T backbone) | true,true,true (M backbone)
    extra (not TTTConfig keys): head_dim=8, seq_len=37, prefill_len=21, decode_steps=16,
    inner_ln_eps=1e-06, post_norm_eps=1e-06, backbone=T|M, seed=<int>
Shapes: C=32, H=4, d=C/H=8, I=64, b=16, L=37 (= 2 full mini-batches + 5 tokens), F = d (linear) or 4d (mlp).

  param.<key>          F32, <key> = Block state_dict key relative to `model.layers.{i}.` (ttt.md 6.1):
      seq_modeling_block.q_proj.weight [C,C]; .k_proj.weight [C,C] (T only); .v_proj.weight, .o_proj.weight
      [C,C]; .g_proj.weight [C,C] (M only); .conv_q.weight/.conv_k.weight [C,1,4] + .bias [C] (M only);
      .learnable_token_idx [b]; .learnable_ttt_lr_weight [H,1,C]; .learnable_ttt_lr_bias [H,1];
      .ttt_norm_weight/.ttt_norm_bias [H,d]; .post_norm.weight/.bias [C];
      .W1 [H,d,F], .b1 [H,1,F] (+ .W2 [H,F,d], .b2 [H,1,d] for mlp);
      mlp.gate_proj.weight [I,C], mlp.up_proj.weight [I,C], mlp.down_proj.weight [C,I];
      seq_norm.weight [C], ffn_norm.weight [C]; conv.norm.weight [C], conv.conv.weight [C,1,4],
      conv.conv.bias [C] (M only).
  input.x              [L,C]   block input (residual stream, before any norm)
  trace.XQ, trace.XK   [H,L,d] per-head queries/keys AFTER the M-backbone convs and AFTER RoPE
  trace.XV             [H,L,d] per-head values (no RoPE)
  trace.ttt_lr         [H,L]   lr_h(t) = ttt_base_lr * sigmoid(x_t . w_h + c_h) / d   (x = seq_norm output;
                               NOT multiplied by the token-index scale s_i)
  trace.inner_out      [H,L,d] o_t = q_t + LN_{ttt_norm_h}(f_res(q_t; W_t)) (before head concat / post_norm)
  trace.layer_out      [L,C]   TTT layer output (after post_norm, gate, o_proj), i.e. what is added to h
  output.block         [L,C]   whole Block output, one call, dual form (aligned chunks of 16 + partial 5)
  output.block_primal  [L,C]   same, token-by-token primal form (equal to fp64 precision)
  output.block_decode  [L,C]   prefill 21 tokens (one call) then 16 single-token calls, cached state
  state.W1, state.b1 (+ state.W2, state.b2 for mlp)   inner weights at the START of the current
                               mini-batch after all 37 tokens (i.e. after committing mini-batches 0 and 1),
                               shapes as the params ([H,d,F], [H,1,F], [H,F,d], [H,1,d])
  state.W1_grad, state.b1_grad (+ W2_grad, b2_grad)   lr-weighted gradient sums of the 5 pending tokens
                               (positions 32..36), sum_j lr_j * dl_j/dW at the start weights,
                               NOT multiplied by the token scale s_i; same shapes as the weights
  state.conv_pre       [C,4]   (M only) pre_conv history = last 4 INPUTS of conv.conv (i.e. conv.norm
                               outputs of tokens 33..36), oldest first (column 3 = newest)
  state.conv_qk        [C,4]   (M only) last 4 xqk = q_proj(seq_norm(h)) rows (inputs of conv_q and conv_k,
                               one shared history), oldest first

----------------------------------------------------------------------------------------------------------
2) Model fixtures  tests/fixtures/ttt/model_linear_T/ , tests/fixtures/ttt/model_mlp_M/
----------------------------------------------------------------------------------------------------------
  config.json         TTTConfig keys (ttt.md 6.2) + "model_type":"ttt", "architectures":["TTTForCausalLM"];
                      vocab_size 53, hidden_size 32, intermediate_size 64, num_hidden_layers 2,
                      num_attention_heads 4, mini_batch_size 16, rope_theta 10000.0, rms_norm_eps 1e-6,
                      tie_word_embeddings true; linear/T (ttt_base_lr 1.0), mlp/M (ttt_base_lr 0.1).
  model.safetensors   F32 state_dict: model.embed_tokens.weight [V,C], model.layers.{0,1}.<block keys>,
                      model.norm.weight [C]; NO lm_head.weight (tied: logits = norm(h) @ embed^T).
                      __metadata__ {"format":"pt"}.
  golden.safetensors  tokens I64 [37]; logits F32 [37,V] (one forward from an empty cache);
                      logits_decode F32 [37,V] (prefill 21 tokens, then 16 single-token steps).

----------------------------------------------------------------------------------------------------------
Semantics / conventions (everything the C++ side must match)
----------------------------------------------------------------------------------------------------------
* Row-vector convention. nn.Linear weights are [out,in]: y = x W^T.  W1/W2 are used as x W (no transpose).
* Block:  if pre_conv: h += dwconv(RMSNorm_conv(h));  h += TTT(RMSNorm_seq(h));
          h += down(silu(gate(f)) * up(f)), f = RMSNorm_ffn(h).
  Model:  h = embed[tokens]; blocks; logits = RMSNorm_final(h) @ embed^T.
  RMSNorm(x) = x * rsqrt(mean(x^2) + rms_norm_eps) * w   (computed in float64 here, eps 1e-6).
* Causal depthwise conv (conv.conv, conv_q, conv_k; kernel 4, bias, no norm/activation inside):
  y[t,c] = bias[c] + sum_{k=0..3} w[c,0,k] * u[t-3+k, c], zeros before the first token of the sequence.
  The cache history holds the last 4 inputs (oldest first); decode shifts left and appends.
* Projections: T: XQ = x Wq^T, XK = x Wk^T;  M: xqk = x Wq^T, XQ = conv_q(xqk), XK = conv_k(xqk).
  XV = x Wv^T.  Heads: channel c = h*d + j.
* RoPE on XQ, XK only; position = (absolute token index) mod 16; interleaved pairs (x[2p], x[2p+1]),
  phi = pos * inv_freq[p], inv_freq[p] = 1 / (theta ** (float32(2p)/d)) computed in FLOAT32, phi computed
  in float32, cos/sin evaluated in float32 and then promoted (this matches the official module; using
  float64 angles instead changes outputs by ~1e-6, reported by the self-check below).
  x'[2p] = x[2p] cos - x[2p+1] sin ;  x'[2p+1] = x[2p] sin + x[2p+1] cos.
* lr gate: lr_h(t) = ttt_base_lr * sigmoid(x_t . learnable_ttt_lr_weight[h,0,:] + learnable_ttt_lr_bias[h,0]) / d
  with x = TTT-layer input (seq_norm output; after the pre_conv residual).
* Token scale: s_i = max(0, 1/(i+1) + learnable_token_idx[i]), i = position inside the mini-batch
  (= absolute position mod 16).  The fixtures set learnable_token_idx[3] = -0.5 -> s_3 = 0 (clamp).
* Inner model per head: f_res(z) = z W1 + b1 (linear) or gelu_tanh(z W1 + b1) W2 + b2 (mlp);
  loss l_j(W) = 1/2 || LN_{gamma_h,beta_h}(f_res(k_j; W)) - (v_j - k_j) ||^2 (rotated k_j), LN eps 1e-6,
  biased variance.  All gradients of a mini-batch are taken at the mini-batch start weights W0.
  Weights used for the token at in-mini-batch position i: W_i = W0 - s_i * sum_{j<=i} lr_j dl_j/dW(W0)
  (token i's own gradient included).  Output o_i = q_i + LN(f_res(q_i; W_i)).  At the end of a full
  mini-batch (i = 15) W0 <- W_15 and the sums reset.  A trailing partial mini-batch (here 5 tokens) uses
  s_0..s_4 and does NOT commit: the cache keeps W0 plus the unscaled sums (state.*_grad).
  gelu is always the tanh approximation with the exact c = sqrt(2/pi).
* TTT layer output: y = concat_heads(o); y = LayerNorm(y; post_norm, eps 1e-6);
  if use_gate: y = gelu_tanh(x Wg^T) * y;  out = y Wo^T.
* Decode: a call may start anywhere; this reference uses the dual form for every chunk that starts on a
  mini-batch boundary (up to 16 tokens) and the primal one-token update otherwise.  Results are identical.

Parameter draws (float32, torch.Generator seeded per file): *_proj.weight ~ N(0,1)/sqrt(fan_in); W1 ~
N(0,1)/sqrt(d); W2 ~ 0.5*N(0,1)/sqrt(4d) (smaller Z2 spread -> the TTT-MLP update matters at order 1);
b1, ttt_norm_bias, post_norm.bias ~ 0.1*N; b2 ~ 0.05*N; all norm weights 1 + 0.1*N; conv weights/biases
U(-0.5, 0.5); learnable_ttt_lr_weight ~ N/sqrt(C), learnable_ttt_lr_bias ~ 0.5*N; learnable_token_idx
~ 0.05*N with [3] = -0.5; input.x ~ N(0,1); model embedding ~ 0.5*N, tokens uniform in [0, 53).

Suggested C++ tolerance in float32: ~1e-5 absolute (values are O(1..10)); the float32 run of this reference
differs from the float64 goldens by the amount printed in the self-check ("fp32 run vs fp64").
"""

import json
import math
import os
import struct
import sys
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

LN_EPS = 1e-6            # inner ttt_norm and post_norm LayerNorm eps (fixed in the official code)
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "ttt")

L_SEQ = 37
PREFILL = 21
PIECES = (5, 3, 24, 1, 4)


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cfg:
    kind: str                 # "linear" | "mlp"
    share_qk: bool
    use_gate: bool
    pre_conv: bool
    base_lr: float
    C: int = 32
    H: int = 4
    I: int = 64
    b: int = 16
    theta: float = 10000.0
    K: int = 4                # conv_kernel
    rms_eps: float = 1e-6
    rope_fp32: bool = True    # angles/cos/sin in float32 (official behaviour)

    @property
    def d(self):
        return self.C // self.H

    @property
    def F(self):              # inner hidden width
        return self.d if self.kind == "linear" else 4 * self.d

    @property
    def inner_names(self):
        return ("W1", "b1") if self.kind == "linear" else ("W1", "b1", "W2", "b2")


def make_cfg(kind, backbone):
    m = backbone == "M"
    return Cfg(kind=kind, share_qk=m, use_gate=m, pre_conv=m, base_lr=1.0 if kind == "linear" else 0.1)


def cfg_metadata(cfg, extra=None):
    def s(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, float) else str(v)
    md = {
        "hidden_size": s(cfg.C), "num_attention_heads": s(cfg.H), "intermediate_size": s(cfg.I),
        "mini_batch_size": s(cfg.b), "rope_theta": s(cfg.theta), "ttt_layer_type": cfg.kind,
        "ttt_base_lr": s(cfg.base_lr), "share_qk": s(cfg.share_qk), "use_gate": s(cfg.use_gate),
        "pre_conv": s(cfg.pre_conv), "conv_kernel": s(cfg.K), "rms_norm_eps": s(cfg.rms_eps),
        "head_dim": s(cfg.d), "inner_ln_eps": s(LN_EPS), "post_norm_eps": s(LN_EPS),
    }
    if extra:
        md.update({k: s(v) for k, v in extra.items()})
    return md


# ---------------------------------------------------------------------------------------------------------
# elementary functions
# ---------------------------------------------------------------------------------------------------------
def layer_norm(z, w, b, eps=LN_EPS):
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)          # biased
    return (z - mu) / torch.sqrt(var + eps) * w + b


def ln_l2_grad(z, y, gamma, beta, eps=LN_EPS):
    """d/dz of 1/2 || gamma*zhat + beta - y ||^2, closed form (ttt.md 1.3)."""
    mu = z.mean(-1, keepdim=True)
    sig = torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + eps)
    zh = (z - mu) / sig
    gh = gamma * (gamma * zh + beta - y)
    return (gh - gh.mean(-1, keepdim=True) - zh * (gh * zh).mean(-1, keepdim=True)) / sig


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(GELU_C * (x + GELU_A * x ** 3)))


def gelu_tanh_grad(x):
    t = torch.tanh(GELU_C * (x + GELU_A * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


# Whether the float32 RoPE table holds the correctly rounded cos/sin of its float32 angles (as
# ttt-lm-pytorch's table is meant to be) instead of torch's vectorised float32 cos/sin, which is 1 ulp
# away in about 10% of the entries. ttt_grad_ref.py sets it, so that double-precision gradient
# comparisons are limited by arithmetic, not by the table (the forward fixtures keep torch's).
ROPE_CORRECTLY_ROUNDED = False


def rope_cos_sin(pos, d, theta, dtype, fp32=True):
    """cos/sin [len(pos), d/2] for interleaved RoPE; pos already reduced mod b."""
    if fp32:
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        ang = pos.float()[:, None] * inv[None, :]
        if ROPE_CORRECTLY_ROUNDED:
            return ang.double().cos().float().to(dtype), ang.double().sin().float().to(dtype)
    else:
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = pos.double()[:, None] * inv[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rope_interleaved(x, pos, theta, fp32=True):
    """x [H, L, d]; pairs (2p, 2p+1)."""
    cos, sin = rope_cos_sin(pos, x.shape[-1], theta, x.dtype, fp32)
    xe, xo = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = xe * cos - xo * sin
    out[..., 1::2] = xe * sin + xo * cos
    return out


def causal_dwconv(u, w, bias, hist):
    """u [L,C] new inputs; w [C,1,K]; bias [C]; hist [C,K] last K inputs (oldest first).
    Returns y [L,C] and the new history [C,K]."""
    L = u.shape[0]
    K = w.shape[-1]
    buf = torch.cat([hist[:, 1:], u.T], dim=1)            # [C, K-1+L]
    y = bias[:, None].expand(-1, L).clone()
    for k in range(K):
        y = y + w[:, 0, k:k + 1] * buf[:, k:k + L]
    new_hist = torch.cat([hist, u.T], dim=1)[:, -K:].clone()
    return y.T.contiguous(), new_hist


def token_scale(token_idx):
    b = token_idx.shape[0]
    base = 1.0 / torch.arange(1, b + 1, dtype=token_idx.dtype)
    return torch.clamp(base + token_idx, min=0.0)


# ---------------------------------------------------------------------------------------------------------
# inner model
# ---------------------------------------------------------------------------------------------------------
class InnerState:
    """W at the start of the current mini-batch + lr-weighted gradient sums of the pending tokens + position."""

    def __init__(self, cfg, p, b=None):
        self.cfg = cfg
        self.b = cfg.b if b is None else b
        self.W = {n: p["seq_modeling_block." + n].clone() for n in cfg.inner_names}
        self.G = {n: torch.zeros_like(v) for n, v in self.W.items()}
        self.pos = 0


def inner_grads(cfg, W, K, V, gamma, beta):
    """Per-token gradient pieces at weights W for rows K,V [H,m,d].
    linear: (G,) with G = dl/dZ [H,m,d];  mlp: (G1, G2, X2, Z1)."""
    if cfg.kind == "linear":
        Z = K @ W["W1"] + W["b1"]
        return (ln_l2_grad(Z, V - K, gamma, beta),)
    Z1 = K @ W["W1"] + W["b1"]
    X2 = gelu_tanh(Z1)
    Z2 = X2 @ W["W2"] + W["b2"]
    G2 = ln_l2_grad(Z2, V - K, gamma, beta)
    G1 = (G2 @ W["W2"].transpose(-1, -2)) * gelu_tanh_grad(Z1)
    return G1, G2, X2


def dual_chunk(cfg, st, Q, K, V, lr, s, gamma, beta):
    """Dual form for m <= b tokens starting on a mini-batch boundary. Q,K,V [H,m,d], lr [H,m], s [m]."""
    assert st.pos % st.b == 0 and all(float(g.abs().max()) == 0.0 for g in st.G.values())
    m = Q.shape[1]
    W = st.W
    E = torch.tril(s[None, :, None] * lr[:, None, :])     # E_ij = s_i lr_j, j <= i   [H,m,m]
    lrc = lr[..., None]                                    # [H,m,1]
    if cfg.kind == "linear":
        (G,) = inner_grads(cfg, W, K, V, gamma, beta)
        Zb = Q @ W["W1"] + W["b1"] - (E * (Q @ K.transpose(-1, -2) + 1.0)) @ G
        out = Q + layer_norm(Zb, gamma, beta)
        sums = {"W1": K.transpose(-1, -2) @ (lrc * G), "b1": (lrc * G).sum(1, keepdim=True)}
    else:
        G1, G2, X2 = inner_grads(cfg, W, K, V, gamma, beta)
        Z1b = Q @ W["W1"] + W["b1"] - (E * (Q @ K.transpose(-1, -2) + 1.0)) @ G1
        X2b = gelu_tanh(Z1b)
        Z2b = X2b @ W["W2"] + W["b2"] - (E * (X2b @ X2.transpose(-1, -2) + 1.0)) @ G2
        out = Q + layer_norm(Z2b, gamma, beta)
        sums = {"W1": K.transpose(-1, -2) @ (lrc * G1), "b1": (lrc * G1).sum(1, keepdim=True),
                "W2": X2.transpose(-1, -2) @ (lrc * G2), "b2": (lrc * G2).sum(1, keepdim=True)}
    if m == st.b:                                          # full mini-batch: commit with s_{b-1}
        for n in cfg.inner_names:
            st.W[n] = W[n] - s[m - 1] * sums[n]
            st.G[n] = torch.zeros_like(st.W[n])
    else:                                                  # partial: keep the unscaled sums pending
        st.G = sums
    st.pos += m
    return out


def f_res(cfg, W, x):
    if cfg.kind == "linear":
        return x @ W["W1"] + W["b1"]
    return gelu_tanh(x @ W["W1"] + W["b1"]) @ W["W2"] + W["b2"]


def primal_step(cfg, st, q, k, v, lr, s_all, gamma, beta):
    """One token (any position). q,k,v [H,1,d]; lr [H]."""
    i = st.pos % st.b
    si = s_all[i]
    lrc = lr[:, None, None]
    if cfg.kind == "linear":
        (g,) = inner_grads(cfg, st.W, k, v, gamma, beta)
        st.G["W1"] = st.G["W1"] + lrc * (k.transpose(-1, -2) @ g)
        st.G["b1"] = st.G["b1"] + lrc * g
    else:
        g1, g2, x2 = inner_grads(cfg, st.W, k, v, gamma, beta)
        st.G["W1"] = st.G["W1"] + lrc * (k.transpose(-1, -2) @ g1)
        st.G["b1"] = st.G["b1"] + lrc * g1
        st.G["W2"] = st.G["W2"] + lrc * (x2.transpose(-1, -2) @ g2)
        st.G["b2"] = st.G["b2"] + lrc * g2
    Wi = {n: st.W[n] - si * st.G[n] for n in cfg.inner_names}
    out = q + layer_norm(f_res(cfg, Wi, q), gamma, beta)
    if i == st.b - 1:
        st.W = Wi
        st.G = {n: torch.zeros_like(v_) for n, v_ in Wi.items()}
    st.pos += 1
    return out


def inner_run(cfg, st, Q, K, V, lr, s_all, gamma, beta, form):
    H, L, d = Q.shape
    outs, t = [], 0
    while t < L:
        if form == "dual" and st.pos % st.b == 0:
            m = min(st.b, L - t)
            outs.append(dual_chunk(cfg, st, Q[:, t:t + m], K[:, t:t + m], V[:, t:t + m], lr[:, t:t + m],
                                   s_all[:m], gamma, beta))
            t += m
        else:
            outs.append(primal_step(cfg, st, Q[:, t:t + 1], K[:, t:t + 1], V[:, t:t + 1], lr[:, t],
                                    s_all, gamma, beta))
            t += 1
    return torch.cat(outs, dim=1)


# ---------------------------------------------------------------------------------------------------------
# layer, block, cache, model
# ---------------------------------------------------------------------------------------------------------
def new_cache(cfg, p, dtype, b=None):
    return {"inner": InnerState(cfg, p, b),
            "conv_pre": torch.zeros(cfg.C, cfg.K, dtype=dtype),
            "conv_qk": torch.zeros(cfg.C, cfg.K, dtype=dtype)}


def split_heads(x, H):
    L, C = x.shape
    return x.reshape(L, H, C // H).permute(1, 0, 2).contiguous()


def ttt_layer(cfg, p, x, cache, form, trace=None):
    P = "seq_modeling_block."
    H, d = cfg.H, cfg.d
    st = cache["inner"]
    L = x.shape[0]
    if cfg.share_qk:
        xqk = x @ p[P + "q_proj.weight"].T
        hist = cache["conv_qk"]
        XQ, _ = causal_dwconv(xqk, p[P + "conv_q.weight"], p[P + "conv_q.bias"], hist)
        XK, cache["conv_qk"] = causal_dwconv(xqk, p[P + "conv_k.weight"], p[P + "conv_k.bias"], hist)
    else:
        XQ = x @ p[P + "q_proj.weight"].T
        XK = x @ p[P + "k_proj.weight"].T
    XV = x @ p[P + "v_proj.weight"].T
    XQ, XK, XV = split_heads(XQ, H), split_heads(XK, H), split_heads(XV, H)
    pos = torch.arange(st.pos, st.pos + L) % st.b
    XQ = rope_interleaved(XQ, pos, cfg.theta, cfg.rope_fp32)
    XK = rope_interleaved(XK, pos, cfg.theta, cfg.rope_fp32)
    logits = x @ p[P + "learnable_ttt_lr_weight"][:, 0, :].T + p[P + "learnable_ttt_lr_bias"][:, 0]
    lr = (cfg.base_lr * torch.sigmoid(logits) / d).T.contiguous()          # [H, L]
    s_all = token_scale(p[P + "learnable_token_idx"])
    gamma = p[P + "ttt_norm_weight"][:, None, :]
    beta = p[P + "ttt_norm_bias"][:, None, :]
    inner = inner_run(cfg, st, XQ, XK, XV, lr, s_all, gamma, beta, form)     # [H, L, d]
    y = inner.permute(1, 0, 2).reshape(L, cfg.C)
    y = layer_norm(y, p[P + "post_norm.weight"], p[P + "post_norm.bias"])
    if cfg.use_gate:
        y = gelu_tanh(x @ p[P + "g_proj.weight"].T) * y
    out = y @ p[P + "o_proj.weight"].T
    if trace is not None:
        for k_, v_ in (("XQ", XQ), ("XK", XK), ("XV", XV), ("ttt_lr", lr), ("inner_out", inner),
                       ("layer_out", out)):
            trace.setdefault(k_, []).append(v_)
    return out


def block(cfg, p, h, cache, form, trace=None):
    if cfg.pre_conv:
        u = rms_norm(h, p["conv.norm.weight"], cfg.rms_eps)
        y, cache["conv_pre"] = causal_dwconv(u, p["conv.conv.weight"], p["conv.conv.bias"], cache["conv_pre"])
        h = h + y
    h = h + ttt_layer(cfg, p, rms_norm(h, p["seq_norm.weight"], cfg.rms_eps), cache, form, trace)
    f = rms_norm(h, p["ffn_norm.weight"], cfg.rms_eps)
    g = f @ p["mlp.gate_proj.weight"].T
    u = f @ p["mlp.up_proj.weight"].T
    return h + (F.silu(g) * u) @ p["mlp.down_proj.weight"].T


def block_stream(cfg, p, x, pieces, form="dual", trace=None):
    """Run the block over x [L,C] in consecutive calls of the given lengths, with one cache."""
    assert sum(pieces) == x.shape[0]
    cache = new_cache(cfg, p, x.dtype)
    outs, t = [], 0
    for n in pieces:
        outs.append(block(cfg, p, x[t:t + n], cache, form, trace))
        t += n
    if trace is not None:
        for k_ in list(trace):
            trace[k_] = torch.cat(trace[k_], dim=-2 if k_ != "ttt_lr" else -1)
    return torch.cat(outs, 0), cache


def model_stream(cfg, mp, tokens, n_layers, pieces, form="dual"):
    E = mp["model.embed_tokens.weight"]
    lp = [{k[len(f"model.layers.{i}."):]: v for k, v in mp.items() if k.startswith(f"model.layers.{i}.")}
          for i in range(n_layers)]
    caches = [new_cache(cfg, lp[i], E.dtype) for i in range(n_layers)]
    outs, t = [], 0
    for n in pieces:
        h = E[tokens[t:t + n]]
        for i in range(n_layers):
            h = block(cfg, lp[i], h, caches[i], form)
        outs.append(rms_norm(h, mp["model.norm.weight"], cfg.rms_eps) @ E.T)
        t += n
    return torch.cat(outs, 0)


# ---------------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------------
def param_shapes(cfg):
    C, H, d, I, Fh, K = cfg.C, cfg.H, cfg.d, cfg.I, cfg.F, cfg.K
    P = "seq_modeling_block."
    s = {P + "q_proj.weight": [C, C]}
    if not cfg.share_qk:
        s[P + "k_proj.weight"] = [C, C]
    s[P + "v_proj.weight"] = [C, C]
    s[P + "o_proj.weight"] = [C, C]
    if cfg.share_qk:
        for n in ("conv_q", "conv_k"):
            s[P + n + ".weight"] = [C, 1, K]
            s[P + n + ".bias"] = [C]
    if cfg.use_gate:
        s[P + "g_proj.weight"] = [C, C]
    s[P + "learnable_token_idx"] = [cfg.b]
    s[P + "learnable_ttt_lr_weight"] = [H, 1, C]
    s[P + "learnable_ttt_lr_bias"] = [H, 1]
    s[P + "ttt_norm_weight"] = [H, d]
    s[P + "ttt_norm_bias"] = [H, d]
    s[P + "post_norm.weight"] = [C]
    s[P + "post_norm.bias"] = [C]
    s[P + "W1"] = [H, d, Fh]
    s[P + "b1"] = [H, 1, Fh]
    if cfg.kind == "mlp":
        s[P + "W2"] = [H, Fh, d]
        s[P + "b2"] = [H, 1, d]
    s["mlp.gate_proj.weight"] = [I, C]
    s["mlp.up_proj.weight"] = [I, C]
    s["mlp.down_proj.weight"] = [C, I]
    if cfg.pre_conv:
        s["conv.norm.weight"] = [C]
        s["conv.conv.weight"] = [C, 1, K]
        s["conv.conv.bias"] = [C]
    s["seq_norm.weight"] = [C]
    s["ffn_norm.weight"] = [C]
    return s


def random_params(cfg, gen):
    """float32 parameters scaled so that every piece (in particular the TTT updates) matters."""
    p = {}
    for name, shape in param_shapes(cfg).items():
        n = lambda: torch.randn(shape, generator=gen, dtype=torch.float32)
        leaf = name
        if name.endswith("_proj.weight"):                       # nn.Linear [out, in]
            v = n() / math.sqrt(shape[1])
        elif name.endswith(("conv_q.weight", "conv_k.weight", "conv.conv.weight")):
            v = (torch.rand(shape, generator=gen) * 2 - 1) * 0.5   # torch Conv1d default bound 1/sqrt(4)
        elif name.endswith(("conv_q.bias", "conv_k.bias", "conv.conv.bias")):
            v = (torch.rand(shape, generator=gen) * 2 - 1) * 0.5
        elif leaf == "seq_modeling_block.learnable_token_idx":
            v = 0.05 * n()
            v[3] = -0.5                                         # 1/4 - 0.5 < 0 -> clamped to 0
        elif leaf == "seq_modeling_block.learnable_ttt_lr_weight":
            v = n() / math.sqrt(cfg.C)
        elif leaf == "seq_modeling_block.learnable_ttt_lr_bias":
            v = 0.5 * n()
        elif leaf == "seq_modeling_block.W1":
            v = n() / math.sqrt(shape[1])
        elif leaf == "seq_modeling_block.W2":
            # half of 1/sqrt(fan_in): a smaller spread of Z2 makes the inner LN (and hence the TTT-MLP
            # update, lr = 0.1*sigmoid/d) matter at order 1, like TTT-Linear with lr = sigmoid/d.
            v = 0.5 * n() / math.sqrt(shape[1])
        elif leaf == "seq_modeling_block.b2":
            v = 0.05 * n()
        elif leaf in ("seq_modeling_block.b1", "seq_modeling_block.ttt_norm_bias",
                      "seq_modeling_block.post_norm.bias"):
            v = 0.1 * n()
        elif name.endswith(("norm.weight", "ttt_norm_weight")):
            v = 1.0 + 0.1 * n()
        else:
            raise KeyError(name)
        p[name] = v.contiguous().to(torch.float32)
    return p


def to(p, dtype):
    return {k: v.to(dtype) for k, v in p.items()}


# ---------------------------------------------------------------------------------------------------------
# safetensors (tiny writer / reader)
# ---------------------------------------------------------------------------------------------------------
_DT = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        code, npdt = _DT[t.dtype]
        raw = t.numpy().astype(npdt, copy=False).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0
    header = json.loads(data[8:8 + n].decode("utf-8"))
    buf = data[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        npdt = {"F32": "<f4", "I64": "<i8"}[e["dtype"]]
        a, b = e["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(buf[a:b], dtype=npdt).copy()).reshape(e["shape"])
    assert max((e["data_offsets"][1] for e in header.values()), default=0) == len(buf)
    return out, meta


# ---------------------------------------------------------------------------------------------------------
# independent checks (autograd based)
# ---------------------------------------------------------------------------------------------------------
def maxdiff(a, b):
    return float((a.double() - b.double()).abs().max())


def report(name, val, tol, cmp="<"):
    ok = val < tol if cmp == "<" else val > tol
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {val:.3e} ({cmp} {tol:.0e})")
    assert ok, name


def inner_loss(cfg, W, k, v, gamma, beta):
    r = layer_norm(f_res(cfg, W, k), gamma, beta) - (v - k)
    return 0.5 * (r * r).sum()


def autograd_minibatch_gd(cfg, W0, Q, K, V, lr, s_all, gamma, beta, b):
    """Mini-batch GD straight from the definition (ttt.md 3.1), gradients by autograd, one head at a time.
    Q,K,V [H,L,d] (already rotated), lr [H,L]; W0 dict of [H,...]."""
    H, L, d = Q.shape
    out = torch.zeros_like(Q)
    fin_W = {n: torch.zeros_like(W0[n]) for n in cfg.inner_names}
    fin_G = {n: torch.zeros_like(W0[n]) for n in cfg.inner_names}
    for h in range(H):
        W = {n: W0[n][h].clone() for n in cfg.inner_names}
        ga, be = gamma[h], beta[h]
        for t0 in range(0, L, b):
            grads = []
            for j in range(t0, min(t0 + b, L)):
                Wr = {n: w.clone().requires_grad_(True) for n, w in W.items()}
                loss = inner_loss(cfg, Wr, K[h, j:j + 1], V[h, j:j + 1], ga, be)
                gs = torch.autograd.grad(loss, [Wr[n] for n in cfg.inner_names])
                grads.append(dict(zip(cfg.inner_names, gs)))
            for i, t in enumerate(range(t0, min(t0 + b, L))):
                Wi = {n: W[n] - s_all[i] * sum(lr[h, t0 + j] * grads[j][n] for j in range(i + 1))
                      for n in cfg.inner_names}
                out[h, t] = (Q[h, t:t + 1] + layer_norm(f_res(cfg, Wi, Q[h, t:t + 1]), ga, be))[0]
            if min(t0 + b, L) - t0 == b:
                W = Wi
            else:                                              # trailing partial mini-batch: pending sums
                for n in cfg.inner_names:
                    fin_G[n][h] = sum(lr[h, t0 + j] * grads[j][n] for j in range(len(grads)))
        for n in cfg.inner_names:
            fin_W[n][h] = W[n]
    return out, fin_W, fin_G


def online_gd(cfg, W0, Q, K, V, lr, gamma, beta):
    """b = 1: W_t = W_{t-1} - lr_t grad l_t(W_{t-1}); o_t = q_t + LN(f_res(q_t; W_t)).  Hand-written loop."""
    H, L, d = Q.shape
    out = torch.zeros_like(Q)
    for h in range(H):
        W = {n: W0[n][h].clone() for n in cfg.inner_names}
        for t in range(L):
            Wr = {n: w.clone().requires_grad_(True) for n, w in W.items()}
            loss = inner_loss(cfg, Wr, K[h, t:t + 1], V[h, t:t + 1], gamma[h], beta[h])
            gs = torch.autograd.grad(loss, [Wr[n] for n in cfg.inner_names])
            W = {n: W[n] - lr[h, t] * g for n, g in zip(cfg.inner_names, gs)}
            out[h, t] = (Q[h, t:t + 1] + layer_norm(f_res(cfg, W, Q[h, t:t + 1]), gamma[h], beta[h]))[0]
    return out


def rope_rotate_half_check(x, pos, theta):
    """HF-style: permute (evens first, odds second) -> rotate_half RoPE -> undo permute (fp32 angles)."""
    d = x.shape[-1]
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    xp = x[..., perm]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    fr = pos.float()[:, None] * inv[None, :]
    emb = torch.cat([fr, fr], -1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    rot = torch.cat([-xp[..., d // 2:], xp[..., :d // 2]], -1)
    y = xp * cos + rot * sin
    out = torch.empty_like(y)
    out[..., perm] = y
    return out


def unit_checks():
    print("unit checks (float64)")
    g = torch.Generator().manual_seed(7)
    dt = torch.float64
    z = (3 * torch.randn(4, 9, 8, generator=g)).to(dt).requires_grad_(True)
    y = torch.randn(4, 9, 8, generator=g).to(dt)
    ga = (1 + 0.3 * torch.randn(4, 1, 8, generator=g)).to(dt)
    be = (0.3 * torch.randn(4, 1, 8, generator=g)).to(dt)
    loss = 0.5 * ((layer_norm(z, ga, be) - y) ** 2).sum()
    (gz,) = torch.autograd.grad(loss, z)
    report("ln_l2_grad vs autograd", maxdiff(ln_l2_grad(z.detach(), y, ga, be), gz), 1e-13)
    x = torch.linspace(-8, 8, 2001, dtype=dt).requires_grad_(True)
    (gx,) = torch.autograd.grad(gelu_tanh(x).sum(), x)
    report("gelu_tanh' vs autograd", maxdiff(gelu_tanh_grad(x.detach()), gx), 1e-14)
    report("gelu_tanh vs F.gelu(approximate='tanh')",
           maxdiff(gelu_tanh(x.detach()), F.gelu(x.detach(), approximate="tanh")), 1e-14)
    q = torch.randn(4, 16, 8, generator=g).to(dt)
    pos = torch.arange(16)
    report("interleaved RoPE vs permute+rotate_half RoPE",
           maxdiff(rope_interleaved(q, pos, 10000.0), rope_rotate_half_check(q, pos, 10000.0)), 1e-15)
    report("RoPE at position 0 is identity", maxdiff(rope_interleaved(q[:, :1], pos[:1], 1e4), q[:, :1]), 1e-300)
    u = torch.randn(11, 6, generator=g).to(dt)
    w = torch.randn(6, 1, 4, generator=g).to(dt)
    bb = torch.randn(6, generator=g).to(dt)
    ref = F.conv1d(u.T[None], w, bb, padding=3, groups=6)[0, :, :11].T
    y1, _ = causal_dwconv(u, w, bb, torch.zeros(6, 4, dtype=dt))
    ya, hh = causal_dwconv(u[:5], w, bb, torch.zeros(6, 4, dtype=dt))
    yb, hh = causal_dwconv(u[5:8], w, bb, hh)
    ys = [ya, yb]
    for t in range(8, 11):
        yt, hh = causal_dwconv(u[t:t + 1], w, bb, hh)
        ys.append(yt)
    report("causal_dwconv vs F.conv1d", maxdiff(y1, ref), 1e-14)
    report("causal_dwconv streamed (5,3,1,1,1) vs one call", maxdiff(torch.cat(ys), y1), 1e-14)
    report("conv history = last 4 inputs", maxdiff(hh, u[-4:].T), 1e-300)
    s = token_scale(torch.tensor([0.0, 0.1, -0.5, -0.2], dtype=dt))
    report("token scale clamp", maxdiff(s, torch.tensor([1.0, 0.6, 0.0, 0.05], dtype=dt)), 1e-15)


# ---------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------
def state_tensors(cfg, cache):
    st = cache["inner"]
    out = {}
    for n in cfg.inner_names:
        out["state." + n] = st.W[n]
        out["state." + n + "_grad"] = st.G[n]
    if cfg.pre_conv:
        out["state.conv_pre"] = cache["conv_pre"]
    if cfg.share_qk:
        out["state.conv_qk"] = cache["conv_qk"]
    return out


def layer_fixture(kind, backbone, seed):
    cfg = make_cfg(kind, backbone)
    name = f"ttt_{kind}_{backbone}"
    print(f"\n{name}: seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    p32 = random_params(cfg, gen)
    x32 = torch.randn(L_SEQ, cfg.C, generator=gen, dtype=torch.float32)
    p, x = to(p32, torch.float64), x32.double()

    trace = {}
    out_dual, c_dual = block_stream(cfg, p, x, [L_SEQ], "dual", trace)
    out_primal, c_primal = block_stream(cfg, p, x, [L_SEQ], "primal")
    out_dec, c_dec = block_stream(cfg, p, x, [PREFILL] + [1] * (L_SEQ - PREFILL), "dual")
    out_pcs, c_pcs = block_stream(cfg, p, x, list(PIECES), "dual")
    out_pcs_p, _ = block_stream(cfg, p, x, list(PIECES), "primal")
    mag = float(out_dual.abs().max())
    report("dual vs primal (block)", maxdiff(out_dual, out_primal), 1e-13)
    report("dual vs decode 21+16x1 (block)", maxdiff(out_dual, out_dec), 1e-13)
    report(f"dual vs pieces {PIECES} (block)", maxdiff(out_dual, out_pcs), 1e-13)
    report(f"dual vs pieces {PIECES} primal (block)", maxdiff(out_dual, out_pcs_p), 1e-13)
    sd, sp, se, sc = (state_tensors(cfg, c) for c in (c_dual, c_primal, c_dec, c_pcs))
    report("final state: dual vs primal vs decode vs pieces",
           max(maxdiff(sd[k], o[k]) for k in sd for o in (sp, se, sc)), 1e-13)
    assert c_dec["inner"].pos == L_SEQ

    P = "seq_modeling_block."
    W0 = {n: p[P + n] for n in cfg.inner_names}
    gamma, beta = p[P + "ttt_norm_weight"][:, None, :], p[P + "ttt_norm_bias"][:, None, :]
    s_all = token_scale(p[P + "learnable_token_idx"])
    assert float(s_all[3]) == 0.0
    ref, fW, fG = autograd_minibatch_gd(cfg, W0, trace["XQ"], trace["XK"], trace["XV"], trace["ttt_lr"],
                                        s_all, gamma, beta, cfg.b)
    report("inner_out vs autograd mini-batch GD (definition)", maxdiff(trace["inner_out"], ref), 1e-13)
    report("decode state (W, *_grad) vs autograd mini-batch GD",
           max(max(maxdiff(c_dec["inner"].W[n], fW[n]), maxdiff(c_dec["inner"].G[n], fG[n]))
               for n in cfg.inner_names), 1e-13)

    # b = 1: run the real layer with mini_batch_size 1 (s_0 = 1) vs hand-written online GD
    cfg1 = replace(cfg, b=1)
    p1 = dict(p)
    p1[P + "learnable_token_idx"] = torch.zeros(1, dtype=torch.float64)
    tr1 = {}
    block_stream(cfg1, p1, x, [L_SEQ], "dual", tr1)
    og = online_gd(cfg, W0, tr1["XQ"], tr1["XK"], tr1["XV"], tr1["ttt_lr"], gamma, beta)
    report("b=1 layer vs hand-written online GD (autograd)", maxdiff(tr1["inner_out"], og), 1e-13)

    frozen = trace["XQ"] + layer_norm(f_res(cfg, W0, trace["XQ"]), gamma, beta)
    eff = maxdiff(frozen, trace["inner_out"])
    print(f"  inner_out max |value| {float(trace['inner_out'].abs().max()):.2f}, "
          f"mean |inner_out - frozen-W0 output| {float((frozen - trace['inner_out']).abs().mean()):.3f}")
    report("TTT updates matter: max |inner_out - frozen-W0 output|", eff, 0.5, ">")
    # end-of-sequence partial mini-batch uses s_0..s_4: make sure pending grads are non-trivial
    report("pending grad sums non-zero", float(sum(v.abs().max() for v in c_dec["inner"].G.values())), 1e-3, ">")

    # conventions that change results at the ~1e-6 level (informational for the C++ tolerances)
    cfg64 = replace(cfg, rope_fp32=False)
    out64, _ = block_stream(cfg64, p, x, [L_SEQ], "dual")
    out32, _ = block_stream(cfg, p32, x32, [L_SEQ], "dual")
    out32d, _ = block_stream(cfg, p32, x32, [PREFILL] + [1] * (L_SEQ - PREFILL), "dual")
    print(f"  info: block |out| max {mag:.2f}; fp64-angle RoPE vs fp32-angle RoPE: {maxdiff(out64, out_dual):.2e}; "
          f"fp32 run vs fp64: dual {maxdiff(out32, out_dual):.2e}, decode {maxdiff(out32d, out_dual):.2e}")

    tensors = {"param." + k: v for k, v in p32.items()}
    tensors["input.x"] = x32
    for k_ in ("XQ", "XK", "XV", "ttt_lr", "inner_out", "layer_out"):
        tensors["trace." + k_] = trace[k_]
    tensors["output.block"] = out_dual
    tensors["output.block_primal"] = out_primal
    tensors["output.block_decode"] = out_dec
    tensors.update(state_tensors(cfg, c_dec))
    tensors = {k: v.to(torch.float32) for k, v in tensors.items()}
    md = cfg_metadata(cfg, {"backbone": backbone, "seq_len": L_SEQ, "prefill_len": PREFILL,
                            "decode_steps": L_SEQ - PREFILL, "seed": seed,
                            "generator": "tests/reference/ttt_ref.py"})
    path = os.path.join(OUT_DIR, name + ".safetensors")
    save_safetensors(path, tensors, md)
    back, meta = load_safetensors(path)
    assert meta == md and set(back) == set(tensors)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    print(f"  wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")


def model_fixture(kind, backbone, seed, V=53, n_layers=2):
    cfg = make_cfg(kind, backbone)
    name = f"model_{kind}_{backbone}"
    print(f"\n{name}: seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    mp32 = {"model.embed_tokens.weight": 0.5 * torch.randn(V, cfg.C, generator=gen, dtype=torch.float32)}
    for i in range(n_layers):
        for k, v in random_params(cfg, gen).items():
            mp32[f"model.layers.{i}.{k}"] = v
    mp32["model.norm.weight"] = 1.0 + 0.1 * torch.randn(cfg.C, generator=gen, dtype=torch.float32)
    tokens = torch.randint(0, V, (L_SEQ,), generator=gen, dtype=torch.int64)
    mp = to(mp32, torch.float64)
    logits = model_stream(cfg, mp, tokens, n_layers, [L_SEQ])
    logits_dec = model_stream(cfg, mp, tokens, n_layers, [PREFILL] + [1] * (L_SEQ - PREFILL))
    logits_pr = model_stream(cfg, mp, tokens, n_layers, [L_SEQ], "primal")
    logits_pc = model_stream(cfg, mp, tokens, n_layers, list(PIECES))
    report("logits vs logits_decode", maxdiff(logits, logits_dec), 1e-12)
    report("logits vs primal / pieces", max(maxdiff(logits, logits_pr), maxdiff(logits, logits_pc)), 1e-12)
    l32 = model_stream(cfg, mp32, tokens, n_layers, [L_SEQ])
    print(f"  info: |logits| max {float(logits.abs().max()):.2f}, std {float(logits.std()):.2f}; "
          f"fp32 run vs fp64 {maxdiff(l32, logits):.2e}")

    d = os.path.join(OUT_DIR, name)
    os.makedirs(d, exist_ok=True)
    config = {
        "architectures": ["TTTForCausalLM"], "model_type": "ttt",
        "vocab_size": V, "hidden_size": cfg.C, "intermediate_size": cfg.I, "num_hidden_layers": n_layers,
        "num_attention_heads": cfg.H, "hidden_act": "silu", "max_position_embeddings": 2048,
        "initializer_range": 0.02, "rms_norm_eps": cfg.rms_eps, "use_cache": False, "pad_token_id": None,
        "bos_token_id": 1, "eos_token_id": 2, "pretraining_tp": 1, "tie_word_embeddings": True,
        "rope_theta": cfg.theta, "use_gate": cfg.use_gate, "share_qk": cfg.share_qk,
        "ttt_layer_type": cfg.kind, "ttt_base_lr": cfg.base_lr, "mini_batch_size": cfg.b,
        "pre_conv": cfg.pre_conv, "conv_kernel": cfg.K, "scan_checkpoint_group_size": 0,
        "torch_dtype": "float32",
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(d, "model.safetensors"), mp32, {"format": "pt"})
    save_safetensors(os.path.join(d, "golden.safetensors"),
                     {"tokens": tokens, "logits": logits.float(), "logits_decode": logits_dec.float()},
                     {"seq_len": str(L_SEQ), "prefill_len": str(PREFILL), "decode_steps": str(L_SEQ - PREFILL),
                      "seed": str(seed), "generator": "tests/reference/ttt_ref.py"})
    back, _ = load_safetensors(os.path.join(d, "model.safetensors"))
    assert all(torch.equal(back[k], mp32[k]) for k in mp32) and "lm_head.weight" not in back
    for fn in ("config.json", "model.safetensors", "golden.safetensors"):
        print(f"  wrote {os.path.relpath(os.path.join(d, fn), REPO)} ({os.path.getsize(os.path.join(d, fn))} bytes)")


def main():
    torch.manual_seed(0)
    os.makedirs(OUT_DIR, exist_ok=True)
    unit_checks()
    seeds = {("linear", "T"): 1001, ("linear", "M"): 1002, ("mlp", "T"): 1003, ("mlp", "M"): 1004}
    for (kind, bb), seed in seeds.items():
        layer_fixture(kind, bb, seed)
    model_fixture("linear", "T", 2001)
    model_fixture("mlp", "M", 2002)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT_DIR) for f in fs)
    print(f"\nall checks passed; tests/fixtures/ttt total {total} bytes")
    assert total < 1.2e6


if __name__ == "__main__":
    sys.exit(main())
