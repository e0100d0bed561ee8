#!/usr/bin/python3
"""Independent PyTorch autograd reference for engram's training half (issue 9).

Regenerate (deterministic, fixed seeds, CPU, float64; needs only Debian's torch 1.13 + numpy;
takes a few seconds):

    cd /work/main && /usr/bin/python3 tests/reference/train_ref.py

Written from the documented semantics of Hugging Face's LlamaForCausalLM, GPT2LMHeadModel and
BertForSequenceClassification and of torch's CrossEntropyLoss / clip_grad_norm_ / AdamW, without
reading engram's C++. It imports only the minimal safetensors writer/reader, the parameter drawer
and the per-sequence forwards of tests/reference/decoders.py (the latter only as a second,
independently written formulation to cross-check the batched forwards below). It rewrites exactly
the nine files listed below and nothing else.

Numerics
--------
* Parameters are drawn in float32 (numpy default_rng(seed)), stored F32, and promoted exactly to
  float64; every forward, loss, gradient and optimizer step is computed in float64 from them.
* Init: every weight matrix and embedding ~ N(0, 0.2^2); norm weights 1 + 0.1 N(0,1); biases
  (linear biases AND LayerNorm biases) 0.1 N(0,1).
* Goldens are stored F64 (safetensors dtype "F64"); token ids and labels I64.
* Dropout is off everywhere (the configs say so: the goldens are deterministic).

Files and tensors
-----------------
tests/fixtures/train/llama/
  config.json        HF LlamaConfig keys: vocab_size 61, hidden_size 32, intermediate_size 48,
                     num_hidden_layers 2, num_attention_heads 4, num_key_value_heads 2 (GQA: query
                     head h uses kv head h // 2), head_dim 8, rms_norm_eps 1e-5, rope_theta 1e4,
                     rope_scaling null, max_position_embeddings 64, tie_word_embeddings false,
                     hidden_act silu, attention_bias false, mlp_bias false; plus "engram_train":
                     the optimizer recipe below (extra key, ignored by HF).
  model.safetensors  F32 initial weights, HF names (Linear weights [out, in], y = x W^T, no biases):
                     model.embed_tokens.weight [61,32]
                     model.layers.{i}.input_layernorm.weight [32]
                     model.layers.{i}.self_attn.q_proj.weight [32,32]
                     model.layers.{i}.self_attn.k_proj.weight [16,32]
                     model.layers.{i}.self_attn.v_proj.weight [16,32]
                     model.layers.{i}.self_attn.o_proj.weight [32,32]
                     model.layers.{i}.post_attention_layernorm.weight [32]
                     model.layers.{i}.mlp.gate_proj.weight [48,32]
                     model.layers.{i}.mlp.up_proj.weight [48,32]
                     model.layers.{i}.mlp.down_proj.weight [32,48]
                     model.norm.weight [32]
                     lm_head.weight [61,32]          (untied)
                     for i in {0, 1}: 21 tensors.
  golden.safetensors (F64 unless said)
    tokens           I64 [2,13]   batch of 2 sequences, positions 0..12 in each row
    labels           I64 [2,13]   target of logits[b,t] (ALREADY aligned, no further shift):
                                  tokens[b,t+1] for t < 12, -100 = ignored. Ignored: column 12 of
                                  both rows, row 0 column 5, row 1 columns 0..3 (a prompt prefix).
    logits           F64 [2,13,61]
    loss             F64 [1]      sum over non-ignored (b,t) of -log softmax(logits[b,t])[labels[b,t]]
                                  divided by their count (= CrossEntropyLoss(ignore_index=-100), mean)
    grad.<name>      F64, shape of <name>: d loss / d parameter, for every name of model.safetensors
    step{t}.tokens   I64 [2,13]   t = 1..10: the fresh batch of AdamW step t (same ignore pattern)
    step{t}.labels   I64 [2,13]
    adamw.loss       F64 [10]     loss of step t's batch at the weights BEFORE step t's update
    adamw.lr         F64 [10]     lr_t used by step t
    adamw.grad_norm  F64 [10]     global L2 norm of all gradients of step t, BEFORE clipping
    adamw.clipped    I64 [10]     1 if step t clipped (grad_norm > max_norm), else 0
    final.<name>     F64, shape of <name>: every parameter after the 10 AdamW steps
tests/fixtures/train/gpt2/
  config.json        HF GPT2Config keys: vocab_size 53, n_embd 32, n_layer 2, n_head 4 (head dim 8),
                     n_positions 32, n_ctx 32, n_inner null (= 4*32 = 128), layer_norm_epsilon 1e-5,
                     activation_function gelu_new, tie_word_embeddings true, dropouts 0; "engram_train".
  model.safetensors  F32, HF GPT-2 checkpoint names (no "transformer." prefix). Conv1D weights are
                     [in, out]: y = x W + b. c_attn output columns are q | k | v (32 each), head j =
                     columns 8j..8j+7 of each.
                     wte.weight [53,32], wpe.weight [32,32],
                     h.{i}.ln_1.weight [32], h.{i}.ln_1.bias [32],
                     h.{i}.attn.c_attn.weight [32,96], h.{i}.attn.c_attn.bias [96],
                     h.{i}.attn.c_proj.weight [32,32], h.{i}.attn.c_proj.bias [32],
                     h.{i}.ln_2.weight [32], h.{i}.ln_2.bias [32],
                     h.{i}.mlp.c_fc.weight [32,128], h.{i}.mlp.c_fc.bias [128],
                     h.{i}.mlp.c_proj.weight [128,32], h.{i}.mlp.c_proj.bias [32],
                     ln_f.weight [32], ln_f.bias [32]       (28 tensors). No lm_head tensor:
                     logits = ln_f(h) @ wte^T (tied), so grad.wte.weight = embedding use + head use.
  golden.safetensors exactly the llama list with V = 53: tokens, labels, logits [2,13,53], loss,
                     grad.<name>, step{t}.tokens/labels, adamw.loss/lr/grad_norm/clipped, final.<name>.
tests/fixtures/train/bert/
  config.json        HF BertConfig keys: vocab_size 41, hidden_size 32, num_hidden_layers 2,
                     num_attention_heads 4, intermediate_size 64, hidden_act gelu (exact erf),
                     max_position_embeddings 24, type_vocab_size 2, layer_norm_eps 1e-12,
                     num_labels 6 (+ id2label/label2id), problem_type single_label_classification,
                     pad_token_id 0, dropouts 0.
  model.safetensors  F32, BertForSequenceClassification names (Linear weights [out, in]):
                     bert.embeddings.word_embeddings.weight [41,32]
                     bert.embeddings.position_embeddings.weight [24,32]
                     bert.embeddings.token_type_embeddings.weight [2,32]
                     bert.embeddings.LayerNorm.weight [32], .bias [32]
                     bert.encoder.layer.{i}.attention.self.query.weight [32,32], .bias [32]
                     bert.encoder.layer.{i}.attention.self.key.weight [32,32], .bias [32]
                     bert.encoder.layer.{i}.attention.self.value.weight [32,32], .bias [32]
                     bert.encoder.layer.{i}.attention.output.dense.weight [32,32], .bias [32]
                     bert.encoder.layer.{i}.attention.output.LayerNorm.weight [32], .bias [32]
                     bert.encoder.layer.{i}.intermediate.dense.weight [64,32], .bias [64]
                     bert.encoder.layer.{i}.output.dense.weight [32,64], .bias [32]
                     bert.encoder.layer.{i}.output.LayerNorm.weight [32], .bias [32]
                     bert.pooler.dense.weight [32,32], .bias [32]
                     classifier.weight [6,32], classifier.bias [6]        (41 tensors)
  golden.safetensors
    tokens           I64 [2,11]   ids drawn in [1, 41) (no PAD id 0 occurs); attention mask all ones
    token_type_ids   I64 [2,11]   all 0
    labels           I64 [2]      two different class ids in [0, 6)
    pooled           F64 [2,32]   tanh(pooler(h_last[:, 0]))
    logits           F64 [2,6]    classifier(pooled)
    loss             F64 [1]      mean over the 2 rows of CE(logits[b], labels[b])
    grad.<name>      F64          for every name of model.safetensors (token_type row 1 and position
                                  rows 11..23 get exact zeros)

Semantics
---------
Llama:  h = embed[tok]; per layer: x = rms(h; input_layernorm); q,k,v = x Wq^T, x Wk^T, x Wv^T split
        in heads of 8 (channel = head*8 + j); RoPE rotate_half on q and k (pair (j, j+4), angle =
        pos * theta^(-2j/8), j = 0..3, angle in float64); causal softmax(q k^T / sqrt(8)) v; heads
        concatenated in order; h += o_proj; x = rms(h; post_attention_layernorm);
        h += down(silu(gate(x)) * up(x)); logits = lm_head(rms(h; model.norm)).
        rms(x; w) = x / sqrt(mean(x^2) + 1e-5) * w.
GPT-2:  h = wte[tok] + wpe[pos]; per layer: h += c_proj(attn(ln_1(h))); h += mlp.c_proj(gelu_new(
        c_fc(ln_2(h)))); logits = ln_f(h) wte^T. LayerNorm: biased variance, eps 1e-5.
        gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Attention scale 1/sqrt(8).
BERT:   e = word[tok] + position[0..10] + token_type[0]; x = LN(e; embeddings.LayerNorm);
        per layer (post-LN): x = LN(x + dense(attn(x)); attention.output.LayerNorm);
        x = LN(x + output.dense(gelu_erf(intermediate.dense(x))); output.LayerNorm);
        bidirectional attention, no mask; pooled = tanh(pooler.dense(x[:, 0])); logits =
        classifier(pooled). gelu_erf(x) = 0.5 x (1 + erf(x / sqrt(2))). LN eps 1e-12.

Optimizer recipe (llama and gpt2; written out by hand below, then cross-checked against torch.optim)
--------------------------------------------------------------------------------------------------
for t = 1..10 on batch step{t}:
    g = d mean-loss / d p (for every parameter), grad_norm_t = sqrt(sum over ALL parameters of g^2)
    if grad_norm_t > max_norm (0.5): g *= max_norm / (grad_norm_t + 1e-6)    (clipping triggers at
        every step with this init; printed)
    lr_t = peak * t / 3                                      for t <= 3 (warm-up, peak 1e-2)
    lr_t = min + 0.5 (peak - min) (1 + cos(pi (t - 3) / 7))   for t > 3 (min 1e-3; lr_10 = min)
    for every parameter p:
        if decayed(p): p <- p - lr_t * wd * p                (wd 0.1, decoupled)
        m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2   (m, v start at 0; b1 0.9, b2 0.95)
        p <- p - lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)      (eps 1e-8)
    decayed(p) = rank(p) >= 2 and p is not an embedding table (embed_tokens / wte / wpe):
        llama: q/k/v/o_proj, gate/up/down_proj, lm_head (untied, decayed); gpt2: c_attn.weight,
        attn.c_proj.weight, c_fc.weight, mlp.c_proj.weight. Never norms, biases or embeddings
        (the tied GPT-2 wte, being an embedding, is not decayed).

Zero-by-invariance gradients (read before comparing)
---------------------------------------------------
The gradient of an attention KEY bias is exactly zero in exact arithmetic (b_k adds q . b_k to
every score of a query row; softmax ignores row constants). Those entries are
grad.h.{i}.attn.c_attn.bias[32:64] (gpt2) and grad.bert.encoder.layer.{i}.attention.self.key.bias
(bert); the goldens hold autograd's rounding noise there (|x| < 1e-15): compare them with an
absolute tolerance (or a per-tensor relative tolerance floored by the scale of the other
gradients). Under AdamW such noise g becomes an update lr * g / (sqrt(v) + eps), ~1e-11 here, but
of order lr in float32 (noise ~1e-8, comparable to eps = 1e-8): so final.h.{i}.attn.c_attn.bias
[32:64] is ill-conditioned; exclude those 32 entries per layer from a float final-weight
comparison (they never change the loss, so adamw.loss is unaffected). Likewise rows of wpe /
position_embeddings beyond the sequence length and token_type row 1 have exact zero gradients,
and their AdamW updates are exactly zero (m = v = 0 -> 0 / (0 + eps)), apart from no decay.

Self-checks (asserted, printed): batched forwards and their autograd gradients vs decoders.py's
independent per-sequence forwards (whose attention is checked against a scalar Python loop); GPT-2 and BERT layers (forward AND autograd gradients) vs torch.nn.TransformerEncoderLayer
(norm_first True / False); explicit CE vs F.cross_entropy(ignore_index=-100); autograd gradients vs
central finite differences (single entries of several tensors, and a random all-parameter
direction); hand-written clipping + AdamW vs torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW;
safetensors round trips.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import decoders as dec  # noqa: E402  (safetensors I/O, Draw, RoPE, per-sequence forwards)

torch.set_grad_enabled(True)  # decoders.py disables autograd at import
torch.set_num_threads(1)

D64 = torch.float64
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "train")
GEN = "tests/reference/train_ref.py"

B, T_LM = 2, 13
IGNORE = -100

OPT = dict(steps=10, peak_lr=1e-2, min_lr=1e-3, warmup=3, beta1=0.9, beta2=0.95, eps=1e-8,
           weight_decay=0.1, max_norm=0.5, clip_eps=1e-6, schedule="cosine")

CHECKS = []


def check(name, err, tol):
    ok = err <= tol
    CHECKS.append((name, err, tol, ok))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {err:.3e} (tol {tol:g})")
    assert ok, name


def rel(a, b):
    """max|a - b| / max(max|b|, 1e-3): relative, with a floor for tensors that are zero in exact
    arithmetic (attention key-bias gradients, see the module docstring)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-3)).item()


def F64T(x):
    return dec.T("F64", x.detach().cpu().numpy().astype(np.float64))


# --------------------------------------------------------------------------- configs

LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 61,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
    "max_position_embeddings": 64, "tie_word_embeddings": False, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}

GPT2 = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 53,
    "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32, "n_ctx": 32, "n_inner": None,
    "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
    "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    "tie_word_embeddings": True, "torch_dtype": "float32",
}

BERT = {
    "model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 41,
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 24,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0, "classifier_dropout": None,
    "position_embedding_type": "absolute", "pad_token_id": 0, "num_labels": 6,
    "id2label": {str(i): f"LABEL_{i}" for i in range(6)},
    "label2id": {f"LABEL_{i}": i for i in range(6)},
    "problem_type": "single_label_classification", "torch_dtype": "float32",
}


def opt_json():
    return {"optimizer": "adamw", "steps": OPT["steps"], "batch": B, "seq_len": T_LM,
            "peak_lr": OPT["peak_lr"], "min_lr": OPT["min_lr"], "warmup_steps": OPT["warmup"],
            "schedule": "linear warm-up then cosine to min_lr", "beta1": OPT["beta1"],
            "beta2": OPT["beta2"], "eps": OPT["eps"], "weight_decay": OPT["weight_decay"],
            "max_grad_norm": OPT["max_norm"], "clip_eps": OPT["clip_eps"],
            "decay": "rank >= 2 and not an embedding table", "ignore_index": IGNORE}


# --------------------------------------------------------------------------- primitives

def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x):
    return x * torch.sigmoid(x)


def mha(q, k, v, causal):
    """q [B,T,H,d], k/v [B,T,Hkv,d] -> [B,T,H*d]; query head h reads kv head h // (H/Hkv)."""
    Bq, Tq, H, d = q.shape
    g = H // k.shape[2]
    k = k.repeat_interleave(g, dim=2)
    v = v.repeat_interleave(g, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d)
    if causal:
        allowed = torch.ones(Tq, Tq, dtype=torch.bool).tril()
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v).reshape(Bq, Tq, H * d)


def rope(x, pos, theta):
    """rotate_half RoPE on x [B,T,H,d] at positions pos [T]; angles in float64."""
    d = x.shape[-1]
    inv = theta ** (-2.0 * torch.arange(d // 2, dtype=D64) / d)
    ang = pos.to(D64)[:, None] * inv[None, :]            # [T, d/2]
    c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def lm_loss(logits, labels):
    """Mean over non-ignored positions of -log softmax(logits)[label] (whole batch)."""
    lp = torch.log_softmax(logits, dim=-1)
    keep = labels != IGNORE
    picked = lp.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    return -(picked * keep).sum() / keep.sum()


# --------------------------------------------------------------------------- models

def llama_logits(P, tokens):
    c = LLAMA
    H, Hkv, hd, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
    Bn, Tn = tokens.shape
    pos = torch.arange(Tn)
    h = P["model.embed_tokens.weight"][tokens]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rmsnorm(h, P[p + "input_layernorm.weight"], eps)
        q = (x @ P[p + "self_attn.q_proj.weight"].T).reshape(Bn, Tn, H, hd)
        k = (x @ P[p + "self_attn.k_proj.weight"].T).reshape(Bn, Tn, Hkv, hd)
        v = (x @ P[p + "self_attn.v_proj.weight"].T).reshape(Bn, Tn, Hkv, hd)
        q, k = rope(q, pos, c["rope_theta"]), rope(k, pos, c["rope_theta"])
        h = h + mha(q, k, v, True) @ P[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, P[p + "post_attention_layernorm.weight"], eps)
        a = silu(x @ P[p + "mlp.gate_proj.weight"].T) * (x @ P[p + "mlp.up_proj.weight"].T)
        h = h + a @ P[p + "mlp.down_proj.weight"].T
    return rmsnorm(h, P["model.norm.weight"], eps) @ P["lm_head.weight"].T


def gpt2_block(P, i, h):
    c = GPT2
    C, H, eps = c["n_embd"], c["n_head"], c["layer_norm_epsilon"]
    Bn, Tn, _ = h.shape
    p = f"h.{i}."
    x = layernorm(h, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
    qkv = x @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
    q, k, v = (t.reshape(Bn, Tn, H, C // H) for t in qkv.split(C, dim=-1))
    h = h + mha(q, k, v, True) @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
    x = layernorm(h, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
    a = gelu_tanh(x @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
    return h + a @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]


def gpt2_logits(P, tokens, return_blocks=False):
    Tn = tokens.shape[1]
    h = P["wte.weight"][tokens] + P["wpe.weight"][:Tn]
    blocks = [h]
    for i in range(GPT2["n_layer"]):
        h = gpt2_block(P, i, h)
        blocks.append(h)
    out = layernorm(h, P["ln_f.weight"], P["ln_f.bias"], GPT2["layer_norm_epsilon"]) @ P["wte.weight"].T
    return (out, blocks) if return_blocks else out


def lin(P, name, x):
    return x @ P[name + ".weight"].T + P[name + ".bias"]


def bert_embed(P, tokens, types):
    E, eps = "bert.embeddings.", BERT["layer_norm_eps"]
    Tn = tokens.shape[1]
    e = (P[E + "word_embeddings.weight"][tokens] + P[E + "position_embeddings.weight"][:Tn]
         + P[E + "token_type_embeddings.weight"][types])
    return layernorm(e, P[E + "LayerNorm.weight"], P[E + "LayerNorm.bias"], eps)


def bert_layer(P, i, x):
    c = BERT
    H, eps = c["num_attention_heads"], c["layer_norm_eps"]
    Bn, Tn, C = x.shape
    p = f"bert.encoder.layer.{i}."
    q, k, v = (lin(P, p + "attention.self." + n, x).reshape(Bn, Tn, H, C // H)
               for n in ("query", "key", "value"))
    a = lin(P, p + "attention.output.dense", mha(q, k, v, False))
    x = layernorm(x + a, P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"], eps)
    f = lin(P, p + "output.dense", gelu_erf(lin(P, p + "intermediate.dense", x)))
    return layernorm(x + f, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"], eps)


def bert_forward(P, tokens, types, return_layers=False):
    x = bert_embed(P, tokens, types)
    layers = [x]
    for i in range(BERT["num_hidden_layers"]):
        x = bert_layer(P, i, x)
        layers.append(x)
    pooled = torch.tanh(lin(P, "bert.pooler.dense", x[:, 0]))
    out = (pooled, lin(P, "classifier", pooled))
    return out + (layers,) if return_layers else out


# --------------------------------------------------------------------------- parameters and data

def draw_llama(dr):
    c = LLAMA
    V, C, I = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    H, Hkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    S = {}
    S["model.embed_tokens.weight"] = dr.proj(V, C)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        S[p + "input_layernorm.weight"] = dr.norm(C)
        S[p + "self_attn.q_proj.weight"] = dr.proj(H * hd, C)
        S[p + "self_attn.k_proj.weight"] = dr.proj(Hkv * hd, C)
        S[p + "self_attn.v_proj.weight"] = dr.proj(Hkv * hd, C)
        S[p + "self_attn.o_proj.weight"] = dr.proj(C, H * hd)
        S[p + "post_attention_layernorm.weight"] = dr.norm(C)
        S[p + "mlp.gate_proj.weight"] = dr.proj(I, C)
        S[p + "mlp.up_proj.weight"] = dr.proj(I, C)
        S[p + "mlp.down_proj.weight"] = dr.proj(C, I)
    S["model.norm.weight"] = dr.norm(C)
    S["lm_head.weight"] = dr.proj(V, C)
    return S


def draw_gpt2(dr):
    c = GPT2
    V, C, NP = c["vocab_size"], c["n_embd"], c["n_positions"]
    I = c["n_inner"] or 4 * C
    S = {"wte.weight": dr.proj(V, C), "wpe.weight": dr.proj(NP, C)}
    for i in range(c["n_layer"]):
        p = f"h.{i}."
        S[p + "ln_1.weight"], S[p + "ln_1.bias"] = dr.norm(C), dr.bias(C)
        S[p + "attn.c_attn.weight"], S[p + "attn.c_attn.bias"] = dr.proj(C, 3 * C), dr.bias(3 * C)
        S[p + "attn.c_proj.weight"], S[p + "attn.c_proj.bias"] = dr.proj(C, C), dr.bias(C)
        S[p + "ln_2.weight"], S[p + "ln_2.bias"] = dr.norm(C), dr.bias(C)
        S[p + "mlp.c_fc.weight"], S[p + "mlp.c_fc.bias"] = dr.proj(C, I), dr.bias(I)
        S[p + "mlp.c_proj.weight"], S[p + "mlp.c_proj.bias"] = dr.proj(I, C), dr.bias(C)
    S["ln_f.weight"], S["ln_f.bias"] = dr.norm(C), dr.bias(C)
    return S


def draw_bert(dr):
    c = BERT
    V, C, I, L = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_labels"]
    E = "bert.embeddings."
    S = {E + "word_embeddings.weight": dr.proj(V, C),
         E + "position_embeddings.weight": dr.proj(c["max_position_embeddings"], C),
         E + "token_type_embeddings.weight": dr.proj(c["type_vocab_size"], C),
         E + "LayerNorm.weight": dr.norm(C), E + "LayerNorm.bias": dr.bias(C)}

    def linear(name, o, i):
        S[name + ".weight"], S[name + ".bias"] = dr.proj(o, i), dr.bias(o)

    for i in range(c["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for n in ("query", "key", "value"):
            linear(p + "attention.self." + n, C, C)
        linear(p + "attention.output.dense", C, C)
        S[p + "attention.output.LayerNorm.weight"] = dr.norm(C)
        S[p + "attention.output.LayerNorm.bias"] = dr.bias(C)
        linear(p + "intermediate.dense", I, C)
        linear(p + "output.dense", C, I)
        S[p + "output.LayerNorm.weight"] = dr.norm(C)
        S[p + "output.LayerNorm.bias"] = dr.bias(C)
    linear("bert.pooler.dense", C, C)
    linear("classifier", L, C)
    return S


def lm_batch(rng, vocab):
    """tokens [2,13]; labels = next token, -100 at column 12, row 0 col 5, row 1 cols 0..3."""
    tokens = torch.from_numpy(rng.integers(0, vocab, size=(B, T_LM)).astype(np.int64))
    labels = torch.full((B, T_LM), IGNORE, dtype=torch.int64)
    labels[:, :-1] = tokens[:, 1:]
    labels[0, 5] = IGNORE
    labels[1, 0:4] = IGNORE
    return tokens, labels


def is_embedding(name):
    return any(k in name for k in ("embed_tokens", "wte", "wpe", "word_embeddings",
                                   "position_embeddings", "token_type_embeddings"))


def decayed(name, p):
    return p.dim() >= 2 and not is_embedding(name)


# --------------------------------------------------------------------------- training

def loss_and_grads(fwd, P, tokens, labels):
    Q = {k: v.detach().clone().requires_grad_(True) for k, v in P.items()}
    logits = fwd(Q, tokens)
    loss = lm_loss(logits, labels)
    names = list(Q)
    gs = torch.autograd.grad(loss, [Q[n] for n in names])
    return logits.detach(), loss.detach(), dict(zip(names, gs))


def lr_at(t):
    if t <= OPT["warmup"]:
        return OPT["peak_lr"] * t / OPT["warmup"]
    prog = (t - OPT["warmup"]) / (OPT["steps"] - OPT["warmup"])
    return OPT["min_lr"] + 0.5 * (OPT["peak_lr"] - OPT["min_lr"]) * (1.0 + math.cos(math.pi * prog))


def adamw_run(fwd, P0, batches):
    """Hand-written clip + AdamW, exactly the recipe of the module docstring."""
    P = {k: v.detach().clone() for k, v in P0.items()}
    m = {k: torch.zeros_like(v) for k, v in P.items()}
    v2 = {k: torch.zeros_like(v) for k, v in P.items()}
    b1, b2, eps, wd = OPT["beta1"], OPT["beta2"], OPT["eps"], OPT["weight_decay"]
    losses, lrs, norms, clipped = [], [], [], []
    for t, (tok, lab) in enumerate(batches, start=1):
        _, loss, g = loss_and_grads(fwd, P, tok, lab)
        total = math.sqrt(sum((gi * gi).sum().item() for gi in g.values()))
        did = total > OPT["max_norm"]
        if did:
            s = OPT["max_norm"] / (total + OPT["clip_eps"])
            g = {k: gi * s for k, gi in g.items()}
        lr = lr_at(t)
        for k in P:
            if decayed(k, P[k]):
                P[k] = P[k] - lr * wd * P[k]
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] * g[k]
            mhat = m[k] / (1 - b1 ** t)
            vhat = v2[k] / (1 - b2 ** t)
            P[k] = P[k] - lr * mhat / (torch.sqrt(vhat) + eps)
        losses.append(loss.item())
        lrs.append(lr)
        norms.append(total)
        clipped.append(int(did))
    return P, losses, lrs, norms, clipped


def adamw_torch(fwd, P0, batches):
    """Second formulation: torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW (param groups)."""
    Q = {k: v.detach().clone().requires_grad_(True) for k, v in P0.items()}
    dec_g = [Q[k] for k in Q if decayed(k, Q[k])]
    nod_g = [Q[k] for k in Q if not decayed(k, Q[k])]
    opt = torch.optim.AdamW([{"params": dec_g, "weight_decay": OPT["weight_decay"]},
                             {"params": nod_g, "weight_decay": 0.0}],
                            lr=OPT["peak_lr"], betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"],
                            foreach=False)
    losses = []
    for t, (tok, lab) in enumerate(batches, start=1):
        opt.zero_grad()
        loss = lm_loss(fwd(Q, tok), lab)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(Q.values()), OPT["max_norm"])
        for grp in opt.param_groups:
            grp["lr"] = lr_at(t)
        opt.step()
        losses.append(loss.item())
    return {k: v.detach() for k, v in Q.items()}, losses


# --------------------------------------------------------------------------- checks

def fd_checks(tag, loss_fn, P, grads, names, seed):
    """Central differences with one Richardson step, D = (4 D(h/2) - D(h)) / 3 (error O(h^4)),
    on 3 entries of each named tensor, then along one random all-parameter direction."""
    rng = np.random.default_rng(seed)

    def deriv(shift, h):
        def d(hh):
            return (loss_fn(shift(hh)) - loss_fn(shift(-hh))) / (2 * hh)
        return (4 * d(h / 2) - d(h)) / 3

    worst = 0.0
    for n in names:
        flat = P[n].reshape(-1)
        for idx in rng.choice(flat.numel(), size=3, replace=False):
            def shift(hh, n=n, idx=idx):
                Q = dict(P)
                Q[n] = P[n].clone()
                Q[n].reshape(-1)[idx] += hh
                return Q
            fd = deriv(shift, 1e-4)
            an = grads[n].reshape(-1)[idx].item()
            worst = max(worst, abs(fd - an) / max(abs(an), 1e-3))
    check(f"{tag} autograd vs central FD ({3 * len(names)} entries, rel to max(|g|,1e-3))", worst, 1e-8)
    D = {k: torch.from_numpy(rng.standard_normal(tuple(v.shape))) for k, v in P.items()}
    norm = math.sqrt(sum((x * x).sum().item() for x in D.values()))
    D = {k: x / norm for k, x in D.items()}  # unit direction
    fd = deriv(lambda hh: {k: P[k] + hh * D[k] for k in P}, 1e-3)
    an = sum((grads[k] * D[k]).sum().item() for k in P)
    check(f"{tag} autograd vs central FD along a random all-parameter direction (rel)",
          abs(fd - an) / abs(an), 1e-9)


def enc_layer(d, H, f, eps, act, norm_first):
    return nn.TransformerEncoderLayer(d, H, f, dropout=0.0, activation=act, layer_norm_eps=eps,
                                      batch_first=True, norm_first=norm_first).to(D64).train()


def gpt2_torch_check(P, tokens, labels, grads):
    """GPT-2 as torch modules (TransformerEncoderLayer norm_first, causal mask): logits and grads."""
    c = GPT2
    C, H = c["n_embd"], c["n_head"]
    layers = []
    for i in range(c["n_layer"]):
        p = f"h.{i}."
        L = enc_layer(C, H, 4 * C, c["layer_norm_epsilon"], lambda x: F.gelu(x, approximate="tanh"), True)
        with torch.no_grad():
            L.self_attn.in_proj_weight.copy_(P[p + "attn.c_attn.weight"].T)
            L.self_attn.in_proj_bias.copy_(P[p + "attn.c_attn.bias"])
            L.self_attn.out_proj.weight.copy_(P[p + "attn.c_proj.weight"].T)
            L.self_attn.out_proj.bias.copy_(P[p + "attn.c_proj.bias"])
            L.linear1.weight.copy_(P[p + "mlp.c_fc.weight"].T)
            L.linear1.bias.copy_(P[p + "mlp.c_fc.bias"])
            L.linear2.weight.copy_(P[p + "mlp.c_proj.weight"].T)
            L.linear2.bias.copy_(P[p + "mlp.c_proj.bias"])
            L.norm1.weight.copy_(P[p + "ln_1.weight"])
            L.norm1.bias.copy_(P[p + "ln_1.bias"])
            L.norm2.weight.copy_(P[p + "ln_2.weight"])
            L.norm2.bias.copy_(P[p + "ln_2.bias"])
        layers.append(L)
    wte = P["wte.weight"].clone().requires_grad_(True)
    wpe = P["wpe.weight"].clone().requires_grad_(True)
    lnf = nn.LayerNorm(C, eps=c["layer_norm_epsilon"]).to(D64)
    with torch.no_grad():
        lnf.weight.copy_(P["ln_f.weight"])
        lnf.bias.copy_(P["ln_f.bias"])
    Tn = tokens.shape[1]
    mask = torch.ones(Tn, Tn, dtype=torch.bool).triu(1)  # True = blocked
    x = F.embedding(tokens, wte) + wpe[:Tn]
    for L in layers:
        x = L(x, src_mask=mask)
    logits = lnf(x) @ wte.T
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    loss.backward()
    G = {"wte.weight": wte.grad, "wpe.weight": wpe.grad,
         "ln_f.weight": lnf.weight.grad, "ln_f.bias": lnf.bias.grad}
    for i, L in enumerate(layers):
        p = f"h.{i}."
        G[p + "attn.c_attn.weight"] = L.self_attn.in_proj_weight.grad.T
        G[p + "attn.c_attn.bias"] = L.self_attn.in_proj_bias.grad
        G[p + "attn.c_proj.weight"] = L.self_attn.out_proj.weight.grad.T
        G[p + "attn.c_proj.bias"] = L.self_attn.out_proj.bias.grad
        G[p + "mlp.c_fc.weight"] = L.linear1.weight.grad.T
        G[p + "mlp.c_fc.bias"] = L.linear1.bias.grad
        G[p + "mlp.c_proj.weight"] = L.linear2.weight.grad.T
        G[p + "mlp.c_proj.bias"] = L.linear2.bias.grad
        G[p + "ln_1.weight"], G[p + "ln_1.bias"] = L.norm1.weight.grad, L.norm1.bias.grad
        G[p + "ln_2.weight"], G[p + "ln_2.bias"] = L.norm2.weight.grad, L.norm2.bias.grad
    assert set(G) == set(grads)
    return logits.detach(), loss.item(), max(rel(G[k], grads[k]) for k in grads)


def bert_torch_check(P, tokens, types, labels, grads):
    """BERT as torch modules (TransformerEncoderLayer post-LN, erf GELU): logits and grads."""
    c = BERT
    C, H, I, eps = c["hidden_size"], c["num_attention_heads"], c["intermediate_size"], c["layer_norm_eps"]
    E = "bert.embeddings."
    word = nn.Embedding(c["vocab_size"], C).to(D64)
    posn = nn.Embedding(c["max_position_embeddings"], C).to(D64)
    typ = nn.Embedding(c["type_vocab_size"], C).to(D64)
    eln = nn.LayerNorm(C, eps=eps).to(D64)
    pool = nn.Linear(C, C).to(D64)
    cls = nn.Linear(C, c["num_labels"]).to(D64)
    mods = {E + "word_embeddings": word, E + "position_embeddings": posn,
            E + "token_type_embeddings": typ, E + "LayerNorm": eln, "bert.pooler.dense": pool,
            "classifier": cls}
    layers = []
    for i in range(c["num_hidden_layers"]):
        L = enc_layer(C, H, I, eps, "gelu", False)
        p = f"bert.encoder.layer.{i}."
        s = p + "attention.self."
        with torch.no_grad():
            L.self_attn.in_proj_weight.copy_(torch.cat([P[s + n + ".weight"] for n in ("query", "key", "value")]))
            L.self_attn.in_proj_bias.copy_(torch.cat([P[s + n + ".bias"] for n in ("query", "key", "value")]))
        mods.update({p + "attention.output.dense": L.self_attn.out_proj,
                     p + "attention.output.LayerNorm": L.norm1, p + "intermediate.dense": L.linear1,
                     p + "output.dense": L.linear2, p + "output.LayerNorm": L.norm2})
        layers.append(L)
    with torch.no_grad():
        for name, mod in mods.items():
            mod.weight.copy_(P[name + ".weight"])
            if hasattr(mod, "bias") and mod.bias is not None and name + ".bias" in P:
                mod.bias.copy_(P[name + ".bias"])
    Tn = tokens.shape[1]
    x = eln(word(tokens) + posn(torch.arange(Tn))[None] + typ(types))
    for L in layers:
        x = L(x)
    logits = cls(torch.tanh(pool(x[:, 0])))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    G = {}
    for name, mod in mods.items():
        G[name + ".weight"] = mod.weight.grad
        if name + ".bias" in P:
            G[name + ".bias"] = mod.bias.grad
    for i, L in enumerate(layers):
        s = f"bert.encoder.layer.{i}.attention.self."
        for j, n in enumerate(("query", "key", "value")):
            G[s + n + ".weight"] = L.self_attn.in_proj_weight.grad[j * C:(j + 1) * C]
            G[s + n + ".bias"] = L.self_attn.in_proj_bias.grad[j * C:(j + 1) * C]
    assert set(G) == set(grads), set(G) ^ set(grads)
    errs = {k: rel(G[k], grads[k]) for k in grads}
    return logits.detach(), loss.item(), max(errs.values())


# --------------------------------------------------------------------------- writers

def write_model(d, cfg, S, seed):
    dec.write_json(os.path.join(d, "config.json"), cfg)
    store = {k: t for k, (t, _) in S.items()}
    path = os.path.join(d, "model.safetensors")
    dec.write_safetensors(path, store, {"format": "pt", "generator": GEN, "seed": str(seed)})
    dec.check_roundtrip(path, store)


def write_golden(d, G, meta):
    path = os.path.join(d, "golden.safetensors")
    dec.write_safetensors(path, G, meta)
    dec.check_roundtrip(path, G)


def opt_meta():
    return {f"opt.{k}": repr(v) if isinstance(v, float) else str(v) for k, v in OPT.items()}


# --------------------------------------------------------------------------- main parts

def make_lm(kind, seed):
    cfg = LLAMA if kind == "llama" else GPT2
    print(f"{kind}:")
    dr = dec.Draw(seed)
    S = draw_llama(dr) if kind == "llama" else draw_gpt2(dr)
    P = {k: v for k, (_, v) in S.items()}
    V = cfg["vocab_size"]
    fwd = llama_logits if kind == "llama" else gpt2_logits
    tokens, labels = lm_batch(dr.rng, V)
    batches = [lm_batch(dr.rng, V) for _ in range(OPT["steps"])]

    logits, loss, grads = loss_and_grads(fwd, P, tokens, labels)

    # --- second formulations of the forward
    # decoders.py's per-sequence forward (written separately from the same spec; its attention is
    # also checked there against a scalar Python loop), differentiated by autograd too
    Q = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    one = dec.llama_forward if kind == "llama" else dec.gpt2_forward
    ref = torch.stack([one(dict(cfg), Q, tokens[b], check_tag=f"train.{kind}.row{b}")[0] for b in range(B)])
    rgrads = dict(zip(Q, torch.autograd.grad(lm_loss(ref, labels), list(Q.values()))))
    ref = ref.detach()
    check(f"{kind} batched logits vs decoders.py per-sequence forward (abs)", (logits - ref).abs().max().item(), 1e-12)
    check(f"{kind} every grad vs autograd through decoders.py's forward (max rel)",
          max(rel(rgrads[k], grads[k]) for k in grads), 1e-12)
    ce = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE)
    check(f"{kind} explicit CE vs F.cross_entropy(ignore_index=-100)", abs(ce.item() - loss.item()), 1e-14)
    if kind == "gpt2":
        tl, tloss, gerr = gpt2_torch_check(P, tokens, labels, grads)
        check("gpt2 logits vs nn.TransformerEncoderLayer(norm_first) model", (tl - logits).abs().max().item(), 1e-12)
        check("gpt2 every grad vs nn.TransformerEncoderLayer model autograd (max rel)", gerr, 1e-12)
    # mask pattern
    n_keep = int((labels != IGNORE).sum())
    assert n_keep == B * (T_LM - 1) - 1 - 4, n_keep

    # --- finite differences
    def loss_fn(Q):
        with torch.no_grad():
            return lm_loss(fwd(Q, tokens), labels).item()

    names = list(P)
    pick = [names[0], names[2], names[len(names) // 2], names[-2], names[-1]]
    if kind == "gpt2":
        pick += ["h.1.attn.c_attn.bias", "h.0.ln_2.weight"]
    fd_checks(kind, loss_fn, P, grads, pick, seed + 7)

    # --- AdamW
    final, losses, lrs, norms, clipped = adamw_run(fwd, P, batches)
    tfinal, tlosses = adamw_torch(fwd, P, batches)
    check(f"{kind} hand AdamW losses vs torch.optim.AdamW", max(abs(a - b) for a, b in zip(losses, tlosses)), 1e-13)
    werr = {k: (final[k] - tfinal[k]).abs().max().item() for k in final}
    wk = max(werr, key=werr.get)
    # The gradient of an attention KEY bias is zero in exact arithmetic (it adds q.b_k to every
    # score of a query row, and softmax ignores row constants), so it is rounding noise ~1e-17,
    # and Adam turns noise g into updates lr * g / eps ~ 1e-11: the two optimizers agree to that.
    print(f"  worst AdamW weight gap at {wk}")
    check(f"{kind} hand AdamW final weights vs torch.optim.AdamW (max abs)", werr[wk], 1e-10)
    moved = max((final[k] - P[k]).abs().max().item() for k in P)
    print(f"  loss {loss.item():.6f} over {n_keep} positions; logits std {logits.std().item():.3f}")
    print(f"  adamw.loss  {' '.join(f'{x:.4f}' for x in losses)}")
    print(f"  adamw.lr    {' '.join(f'{x:.5f}' for x in lrs)}")
    print(f"  grad_norm   {' '.join(f'{x:.3f}' for x in norms)}  (max_norm {OPT['max_norm']})")
    print(f"  clipped     {clipped}  -> clipping triggered at {sum(clipped)}/10 steps; "
          f"max |final - initial| = {moved:.4f}")
    assert sum(clipped) >= 1 and losses[-1] < losses[0]

    # --- write
    d = os.path.join(OUT, kind)
    cfg_out = dict(cfg)
    cfg_out["engram_train"] = opt_json()
    write_model(d, cfg_out, S, seed)
    G = {"tokens": dec.i64(tokens), "labels": dec.i64(labels), "logits": F64T(logits),
         "loss": F64T(loss.reshape(1))}
    for k, g in grads.items():
        G["grad." + k] = F64T(g)
    for t, (tok, lab) in enumerate(batches, start=1):
        G[f"step{t}.tokens"], G[f"step{t}.labels"] = dec.i64(tok), dec.i64(lab)
    G["adamw.loss"] = F64T(torch.tensor(losses, dtype=D64))
    G["adamw.lr"] = F64T(torch.tensor(lrs, dtype=D64))
    G["adamw.grad_norm"] = F64T(torch.tensor(norms, dtype=D64))
    G["adamw.clipped"] = dec.i64(torch.tensor(clipped))
    for k, p in final.items():
        G["final." + k] = F64T(p)
    meta = {"generator": GEN, "compute": "float64", "seed": str(seed), "batch": str(B),
            "seq_len": str(T_LM), "ignore_index": str(IGNORE),
            "labels": "aligned with logits (labels[b,t] = tokens[b,t+1]); -100 ignored",
            "loss": "mean CE over non-ignored positions of the whole batch",
            "decayed": ",".join(k for k in P if decayed(k, P[k]))}
    meta.update(opt_meta())
    write_golden(d, G, meta)
    return d


def make_bert(seed):
    print("bert:")
    c = BERT
    dr = dec.Draw(seed)
    S = draw_bert(dr)
    P = {k: v for k, (_, v) in S.items()}
    Tn = 11
    tokens = torch.from_numpy(dr.rng.integers(1, c["vocab_size"], size=(B, Tn)).astype(np.int64))
    types = torch.zeros(B, Tn, dtype=torch.int64)
    labels = torch.from_numpy(dr.rng.choice(c["num_labels"], size=B, replace=False).astype(np.int64))

    def fwd_loss(Q):
        pooled, logits = bert_forward(Q, tokens, types)
        lp = torch.log_softmax(logits, dim=-1)
        return pooled, logits, -lp.gather(1, labels[:, None]).mean()

    Q = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    pooled, logits, loss = fwd_loss(Q)
    names = list(Q)
    grads = dict(zip(names, torch.autograd.grad(loss, [Q[n] for n in names])))
    pooled, logits, loss = pooled.detach(), logits.detach(), loss.detach()

    tl, tloss, gerr = bert_torch_check(P, tokens, types, labels, grads)
    check("bert logits vs nn.TransformerEncoderLayer(post-LN) model", (tl - logits).abs().max().item(), 1e-12)
    check("bert every grad vs nn.TransformerEncoderLayer model autograd (max rel)", gerr, 1e-12)
    check("bert explicit CE vs F.cross_entropy", abs(tloss - loss.item()), 1e-14)
    zero_rows = grads["bert.embeddings.token_type_embeddings.weight"][1].abs().max().item() + \
        grads["bert.embeddings.position_embeddings.weight"][Tn:].abs().max().item()
    check("bert unused token-type / position rows get zero grad", zero_rows, 0.0)

    def loss_fn(R):
        with torch.no_grad():
            return fwd_loss(R)[2].item()

    pick = [names[0], "bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.attention.self.key.weight",
            "bert.encoder.layer.1.intermediate.dense.bias", "bert.encoder.layer.1.output.LayerNorm.bias",
            "bert.pooler.dense.weight", "classifier.weight", "classifier.bias"]
    fd_checks("bert", loss_fn, P, grads, pick, seed + 7)
    print(f"  loss {loss.item():.6f}; logits {logits.tolist()}")

    d = os.path.join(OUT, "bert")
    write_model(d, c, S, seed)
    G = {"tokens": dec.i64(tokens), "token_type_ids": dec.i64(types), "labels": dec.i64(labels),
         "pooled": F64T(pooled), "logits": F64T(logits), "loss": F64T(loss.reshape(1))}
    for k, g in grads.items():
        G["grad." + k] = F64T(g)
    write_golden(d, G, {"generator": GEN, "compute": "float64", "seed": str(seed), "batch": str(B),
                        "seq_len": str(Tn), "attention_mask": "all ones", "token_type_ids": "all 0",
                        "loss": "mean over the batch of CE(logits[b], labels[b])"})
    return d


def main():
    print("engram training reference fixtures ->", OUT)
    dirs = [make_lm("llama", 9001), make_lm("gpt2", 9002), make_bert(9003)]
    total = 0
    for d in dirs:
        for f in ("config.json", "model.safetensors", "golden.safetensors"):
            p = os.path.join(d, f)
            sz = os.path.getsize(p)
            assert sz < 1024 * 1024, p
            total += sz
            print(f"  {os.path.relpath(p, ROOT):48s} {sz:8d} B")
    print(f"  total {total} B")
    bad = [c for c in CHECKS if not c[3]]
    print(f"self-checks: {len(CHECKS) - len(bad)}/{len(CHECKS)} passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
