#!/usr/bin/env python3
"""Independent PyTorch reference for engram's RMT (Recurrent Memory Transformer) golden tests.

Spec: /work/shared/reference/rmt.md (sections 1.2, 1.3, 1.4, 2, 9). Written from the spec
only, in pure PyTorch (Debian python3-torch 1.13, numpy 1.24; no transformers, no pip).

Regenerate (from the repository root):

    /usr/bin/python3 tests/reference/rmt_ref.py

The output is deterministic (fixed seeds). The script asserts its self-checks and prints them.

Numerics
--------
Parameters and inputs are drawn as float32 (linear/embedding weights N(0, 0.2^2), linear
biases 0.1*N(0,1), LayerNorm weights 1 + 0.1*N(0,1), LayerNorm biases 0.1*N(0,1)) and stored
F32; every forward pass runs in float64 on exactly those float32 values; outputs are rounded
to F32 when stored. A C++ run in double on the stored F32 parameters agrees with the float64
values to ~1e-13, so against the stored F32 outputs compare with ~1e-6 relative (F32 rounding);
a float32 C++ run should pass at ~1e-4 relative. Token ids are I64.

Files (safetensors: u64-LE header length N, JSON header space-padded to N % 8 == 0, buffer
tensors contiguous in order I64 first then F32, each group sorted by name, data_offsets
relative to the buffer start, "__metadata__" is a string->string map; row-major)
-----------------------------------------------------------------------------------------

tests/fixtures/rmt/decoder/   (rmt.md 1.3: HF MemoryCell/RecurrentWrapper over GPT-2)
  config.json        HF GPT2Config keys + "rmt": {"num_mem_tokens":3, "segment_size":6,
                     "layout":"decoder"}.  V=37, d=16, 2 heads (d_h=8), FFN 64, 2 layers,
                     n_positions 32, LN eps 1e-5, gelu_new (tanh approximation), tied LM head.
  model.safetensors  HF GPT-2 names, no "transformer." prefix:
                     wte.weight [37,16]; wpe.weight [32,16];
                     h.{i}.ln_1.{weight,bias} [16]; h.{i}.attn.c_attn.weight [16,48] (Conv1D,
                     y = x W + b, output columns q|k|v, head j = columns j*8..j*8+7 of each);
                     h.{i}.attn.c_attn.bias [48]; h.{i}.attn.c_proj.weight [16,16], .bias [16];
                     h.{i}.ln_2.{weight,bias}; h.{i}.mlp.c_fc.weight [16,64], .bias [64];
                     h.{i}.mlp.c_proj.weight [64,16], .bias [16]; ln_f.{weight,bias} [16];
                     memory [3,16] (learned initial memory = randn(3,16) * std(wte), F32).
  golden.safetensors
    tokens              I64 [15]      ids in [0,37); left-aligned segments 6, 6, 3
    seg{k}.mem_in       F32 [3,16]    memory entering segment k (seg0 = "memory" param)
    seg{k}.hidden       F32 [s_k+6,16] final hidden after ln_f for [read mem | tokens | write mem]
    seg{k}.logits       F32 [s_k,37]  content rows only (hidden[m:m+s_k] @ wte^T)
    seg{k}.mem_out      F32 [3,16]    = seg{k}.hidden[-3:] (after ln_f); = seg{k+1}.mem_in
    logits              F32 [15,37]   concatenation of seg{k}.logits
    final_memory        F32 [3,16]    = seg2.mem_out
    lm_loss             F32 [1]       mean CE of logits[t] vs tokens[t+1], t=0..13 (shift over the
                                      whole sequence: last token of seg k predicts first of k+1)
    full_lm.logits      F32 [15,37]   plain GPT-2 on all 15 tokens (positions 0..14, no memory)
                                      == memory cell with m=0 and one segment of 15
    bidir.logits        F32 [15,37]   same run with the NeurIPS-22 memory mask (rmt.md 1.4)
    bidir.seg{k}.mem_out F32 [3,16]
    bidir.final_memory  F32 [3,16]

  Decoder semantics: segment k input embeddings = cat(M_k, wte[x_k], M_k) (the same memory twice),
  then + wpe[0 .. s_k+2m-1] (positions restart at 0 every segment: read mem 0..m-1, tokens
  m..m+s_k-1, write mem m+s_k..s_k+2m-1), 2 pre-LN blocks, ln_f. Attention scale 1/sqrt(d_h).
  Mask "causal" (HF, default): plain causal over the s_k+2m positions. Mask "bidir": causal, plus
  read-memory rows see all read-memory columns, plus write-memory rows see all write-memory
  columns (so write rows see the whole segment; content rows never see write memory).
  M_{k+1} = hidden[-m:] after ln_f. The last (short) segment also gets write memory.

tests/fixtures/rmt/encoder/   (rmt.md 1.2: RMTEncoderForSequenceClassification over BERT)
  config.json        HF BertConfig keys + "rmt": {"num_mem_tokens":3, "input_size":16,
                     "segment_size":10, "layout":"encoder", "cls_token_id":1, "sep_token_id":2,
                     "pad_token_id":0, "segment_alignment":"right"}.
                     vocab 40 = 37 real + 3 memory rows (ids 37..39), d=16, 2 heads, FFN 64,
                     2 layers, max positions 16, LN eps 1e-12, exact erf GELU, 6 labels.
  model.safetensors  HF BertForSequenceClassification names, nn.Linear layout W [out,in], y = x W^T + b:
                     bert.embeddings.word_embeddings.weight [40,16] (rows 37..39 = initial memory),
                     bert.embeddings.position_embeddings.weight [16,16],
                     bert.embeddings.token_type_embeddings.weight [2,16] (only row 0 used),
                     bert.embeddings.LayerNorm.{weight,bias},
                     bert.encoder.layer.{i}.attention.self.{query,key,value}.{weight [16,16],bias},
                     bert.encoder.layer.{i}.attention.output.dense.{weight,bias},
                     bert.encoder.layer.{i}.attention.output.LayerNorm.{weight,bias},
                     bert.encoder.layer.{i}.intermediate.dense.{weight [64,16],bias [64]},
                     bert.encoder.layer.{i}.output.dense.{weight [16,64],bias [16]},
                     bert.encoder.layer.{i}.output.LayerNorm.{weight,bias},
                     bert.pooler.dense.{weight [16,16],bias}, classifier.{weight [6,16],bias [6]}.
  golden.safetensors
    tokens              I64 [23]     content ids in [3,37); right-aligned segments 3, 10, 10
    seg{k}.input_ids    I64 [16]     [CLS] 37 38 39 [SEP] x_1..x_s [SEP] PAD.. (PAD=0,CLS=1,SEP=2)
    seg{k}.mem_in       F32 [3,16]   seg0 = word_embeddings rows 37..39
    seg{k}.hidden       F32 [16,16]  last encoder layer output, all 16 rows (PAD rows included)
    seg{k}.logits       F32 [6]      classifier(tanh(pooler(hidden[0])))
    seg{k}.mem_out      F32 [3,16]   = seg{k}.hidden[1:4]; = seg{k+1}.mem_in
    logits              F32 [6]      = last segment's logits
    label               I64 [1]      a class id in [0,6) (drawn); loss = CE(logits, label)
    loss                F32 [1]
    plain.input_ids     I64 [16]     [CLS] tokens[0:11] [SEP] PAD PAD PAD (plain BERT, no memory)
    plain.hidden        F32 [16,16]
    plain.pooled        F32 [16]
    plain.logits        F32 [6]

  Encoder semantics: word-embedding lookup of input_ids, then rows 1..m are overwritten by the
  memory vectors, then + position_embeddings[0..15] + token_type_embeddings[0], then embedding
  LayerNorm (memory re-gets positions 1..m and the LN every segment). Attention is bidirectional
  with a key padding mask (keys with id == PAD are excluded, -inf before softmax); PAD query rows
  are computed like every other row (HF semantics). Post-LN layers:
  x = LN(x + Attn(x)); x = LN(x + W2 gelu_erf(W1 x + b1) + b2). Pooler tanh(W_p h[0] + b_p),
  classifier W_c pooled + b_c. M_{k+1} = last-layer hidden at rows 1..m. With m = 0 the layout
  would be [CLS] [SEP] x [SEP] PAD.. (segment_size = input_size - m - 3), so plain.* checks the
  backbone only (its input has no second [SEP]).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

F64 = torch.float64
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "fixtures", "rmt")

CHECKS = []


def check(name, got, want, tol):
    err = (got - want).abs().max().item() if got.numel() else 0.0
    ok = err <= tol
    CHECKS.append((name, err, tol, ok))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: max|diff| = {err:.3e} (tol {tol:g})")
    assert ok, name


def check_true(name, cond, detail=""):
    CHECKS.append((name, 0.0, 0.0, bool(cond)))
    print(f"  [{'ok' if cond else 'FAIL'}] {name} {detail}")
    assert cond, name


# ----------------------------------------------------------------------------- safetensors

_DT = {torch.float32: ("F32", "<f4", 4), torch.int64: ("I64", "<i8", 8)}


def save_safetensors(path, tensors, metadata=None):
    items = []
    for name, t in tensors.items():
        if t.dtype not in _DT:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        items.append((name, t))
    # larger element size first, then by name (each tensor start aligned to its element size)
    items.sort(key=lambda kv: (-_DT[kv[1].dtype][2], kv[0]))
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, off = [], 0
    for name, t in items:
        code, npdt, _ = _DT[t.dtype]
        raw = np.ascontiguousarray(t.detach().cpu().numpy()).astype(npdt).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    js = json.dumps(header, separators=(",", ":")).encode("utf-8")
    js += b" " * ((-len(js)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for c in chunks:
            f.write(c)


def load_safetensors(path):
    """Strict reader used to validate what we wrote."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and data[8:9] == b"{"
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    assert all(isinstance(v, str) for v in meta.values())
    buf = data[8 + n:]
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    pos = 0
    for b, e, k in spans:
        assert b == pos, f"hole/overlap at {k}"
        pos = e
    assert pos == len(buf), "buffer does not end at EOF"
    out = {}
    inv = {v[0]: (v[1], dt) for dt, v in _DT.items()}
    for k, v in header.items():
        npdt, tdt = inv[v["dtype"]]
        b, e = v["data_offsets"]
        arr = np.frombuffer(buf[b:e], dtype=npdt).reshape(v["shape"])
        assert (e - b) == arr.size * np.dtype(npdt).itemsize
        out[k] = torch.from_numpy(arr.copy()).to(tdt)
    return out, meta


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- parameters

class Draw:
    """float32 draws; the stored float32 values are exactly what the float64 compute uses."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.g, dtype=torch.float32)

    def w(self, *shape, std=0.2):
        return self.randn(*shape) * std

    def b(self, n):
        return self.randn(n) * 0.1

    def ln(self, n):
        return 1.0 + 0.1 * self.randn(n), 0.1 * self.randn(n)

    def ints(self, n, lo, hi):
        return torch.randint(lo, hi, (n,), generator=self.g, dtype=torch.int64)


# ----------------------------------------------------------------------------- primitives

def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):  # HF "gelu_new"
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):  # HF "gelu" (BERT)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def attention(q, k, v, n_head, allowed):
    """q, k, v: [T, d]; allowed: bool [T, T] (row = query, col = key). Heads = contiguous d_h slices."""
    T, d = q.shape
    dh = d // n_head
    out = torch.empty_like(q)
    for h in range(n_head):
        sl = slice(h * dh, (h + 1) * dh)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
        s = s.masked_fill(~allowed, float("-inf"))
        out[:, sl] = torch.softmax(s, dim=-1) @ v[:, sl]
    return out


# ----------------------------------------------------------------------------- GPT-2 backbone

GPT2 = dict(V=37, d=16, n_head=2, f=64, L=2, n_pos=32, eps=1e-5)


def gpt2_params(dr):
    c = GPT2
    d, f = c["d"], c["f"]
    P = {"wte.weight": dr.w(c["V"], d), "wpe.weight": dr.w(c["n_pos"], d)}
    for i in range(c["L"]):
        p = f"h.{i}."
        P[p + "ln_1.weight"], P[p + "ln_1.bias"] = dr.ln(d)
        P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"] = dr.w(d, 3 * d), dr.b(3 * d)
        P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"] = dr.w(d, d), dr.b(d)
        P[p + "ln_2.weight"], P[p + "ln_2.bias"] = dr.ln(d)
        P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"] = dr.w(d, f), dr.b(f)
        P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"] = dr.w(f, d), dr.b(d)
    P["ln_f.weight"], P["ln_f.bias"] = dr.ln(d)
    return P


def gpt2_block(P, i, x, allowed):
    c, p, d = GPT2, f"h.{i}.", GPT2["d"]
    a = layer_norm(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"], c["eps"])
    qkv = a @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
    q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
    x = x + attention(q, k, v, c["n_head"], allowed) @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
    a = layer_norm(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"], c["eps"])
    hdn = gelu_tanh(a @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
    return x + hdn @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]


def gpt2_hidden(P, embeds, allowed, return_blocks=False):
    """embeds: [T, d] token/memory embeddings (no positions yet). Returns hidden after ln_f."""
    T = embeds.shape[0]
    assert T <= GPT2["n_pos"]
    x = embeds + P["wpe.weight"][:T]
    blocks = [x]
    for i in range(GPT2["L"]):
        x = gpt2_block(P, i, x, allowed)
        blocks.append(x)
    h = layer_norm(x, P["ln_f.weight"], P["ln_f.bias"], GPT2["eps"])
    return (h, blocks) if return_blocks else h


def gpt2_logits(P, hidden):
    return hidden @ P["wte.weight"].T  # tied LM head


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def decoder_mask(s, m, mode, write=True):
    T = s + (2 if write else 1) * m
    A = causal(T)
    if mode == "bidir" and m > 0:
        A[:m, :m] = True  # read memory: bidirectional among read memory
        if write:
            A[m + s:, m + s:] = True  # write memory: bidirectional among write memory
    elif mode != "causal" and mode != "bidir":
        raise ValueError(mode)
    return A


def split_left(n, s):
    return [(a, min(a + s, n)) for a in range(0, n, s)]


def split_right(n, s):
    return [(max(0, e - s), e) for e in range(n, 0, -s)][::-1]


def decoder_cell(P, mem, seg, mode="causal", write=True):
    """One MemoryCell call: mem [m, d], seg LongTensor [s]."""
    m, s = mem.shape[0], seg.numel()
    parts = [mem, P["wte.weight"][seg]] + ([mem] if write else [])
    hidden = gpt2_hidden(P, torch.cat(parts, 0), decoder_mask(s, m, mode, write))
    out = {"hidden": hidden, "logits": gpt2_logits(P, hidden[m:m + s])}
    if write:
        out["mem_out"] = hidden[m + s:m + s + m]
    return out


def decoder_run(P, tokens, seg_size, mem0, mode="causal"):
    """RecurrentWrapper: left-aligned split, memory threaded through the segments."""
    mem, segs = mem0, []
    for a, b in split_left(tokens.numel(), seg_size):
        o = decoder_cell(P, mem, tokens[a:b], mode)
        o["mem_in"] = mem
        segs.append(o)
        mem = o["mem_out"]
    return segs, torch.cat([o["logits"] for o in segs], 0), mem


# ----------------------------------------------------------------------------- BERT backbone

BERT = dict(V=37, m=3, d=16, n_head=2, f=64, L=2, n_pos=16, eps=1e-12, labels=6, input_size=16)
PAD, CLS, SEP = 0, 1, 2
BP = "bert.encoder.layer."


def bert_params(dr):
    c = BERT
    d, f = c["d"], c["f"]
    E = "bert.embeddings."
    P = {E + "word_embeddings.weight": dr.w(c["V"] + c["m"], d),
         E + "position_embeddings.weight": dr.w(c["n_pos"], d),
         E + "token_type_embeddings.weight": dr.w(2, d)}
    P[E + "LayerNorm.weight"], P[E + "LayerNorm.bias"] = dr.ln(d)

    def lin(name, o, i):
        P[name + ".weight"], P[name + ".bias"] = dr.w(o, i), dr.b(o)

    for i in range(c["L"]):
        p = f"{BP}{i}."
        for n in ("query", "key", "value"):
            lin(p + "attention.self." + n, d, d)
        lin(p + "attention.output.dense", d, d)
        P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"] = dr.ln(d)
        lin(p + "intermediate.dense", f, d)
        lin(p + "output.dense", d, f)
        P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"] = dr.ln(d)
    lin("bert.pooler.dense", d, d)
    lin("classifier", c["labels"], d)
    return P


def linear(P, name, x):
    return x @ P[name + ".weight"].T + P[name + ".bias"]


def bert_embed(P, ids, mem=None):
    E = "bert.embeddings."
    e = P[E + "word_embeddings.weight"][ids].clone()
    if mem is not None and mem.shape[0] > 0:
        e[1:1 + mem.shape[0]] = mem  # memory overwrites the word embeddings at slots 1..m
    T = ids.numel()
    e = e + P[E + "position_embeddings.weight"][:T] + P[E + "token_type_embeddings.weight"][0]
    return layer_norm(e, P[E + "LayerNorm.weight"], P[E + "LayerNorm.bias"], BERT["eps"])


def bert_layer(P, i, x, allowed):
    p, eps = f"{BP}{i}.", BERT["eps"]
    q = linear(P, p + "attention.self.query", x)
    k = linear(P, p + "attention.self.key", x)
    v = linear(P, p + "attention.self.value", x)
    a = linear(P, p + "attention.output.dense", attention(q, k, v, BERT["n_head"], allowed))
    x = layer_norm(x + a, P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"], eps)
    h = linear(P, p + "output.dense", gelu_erf(linear(P, p + "intermediate.dense", x)))
    return layer_norm(x + h, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"], eps)


def bert_forward(P, ids, mem=None, return_layers=False):
    T = ids.numel()
    allowed = (ids != PAD)[None, :].expand(T, T)  # key padding mask only
    x = bert_embed(P, ids, mem)
    layers = [x]
    for i in range(BERT["L"]):
        x = bert_layer(P, i, x, allowed)
        layers.append(x)
    pooled = torch.tanh(linear(P, "bert.pooler.dense", x[0]))
    out = {"hidden": x, "pooled": pooled, "logits": linear(P, "classifier", pooled)}
    if return_layers:
        out["layers"] = layers
    return out


def encoder_layout(seg, m, input_size):
    ids = [CLS] + [BERT["V"] + j for j in range(m)] + [SEP] + seg.tolist() + [SEP]
    assert len(ids) <= input_size
    return torch.tensor(ids + [PAD] * (input_size - len(ids)), dtype=torch.int64)


def encoder_cell(P, mem, seg, input_size):
    m = mem.shape[0]
    ids = encoder_layout(seg, m, input_size)
    o = bert_forward(P, ids, mem)
    o["input_ids"] = ids
    o["mem_out"] = o["hidden"][1:1 + m]
    return o


def encoder_run(P, tokens, m, input_size):
    seg_size = input_size - m - 3
    mem = P["bert.embeddings.word_embeddings.weight"][BERT["V"]:BERT["V"] + m]
    segs = []
    for a, b in split_right(tokens.numel(), seg_size):
        o = encoder_cell(P, mem, tokens[a:b], input_size)
        o["mem_in"] = mem
        segs.append(o)
        mem = o["mem_out"]
    return segs


# ----------------------------------------------------------------------------- torch cross-checks

def torch_layer_vs(P, prefix_kind, i, x, allowed, norm_first):
    """Run torch.nn.TransformerEncoderLayer with weights copied from our block i."""
    d = x.shape[1]
    if prefix_kind == "gpt2":
        act = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731
        lay = nn.TransformerEncoderLayer(d, GPT2["n_head"], GPT2["f"], dropout=0.0, activation=act,
                                         layer_norm_eps=GPT2["eps"], batch_first=True, norm_first=True)
        p = f"h.{i}."
        w = {"self_attn.in_proj_weight": P[p + "attn.c_attn.weight"].T,  # Conv1D [in,out] -> [out,in]
             "self_attn.in_proj_bias": P[p + "attn.c_attn.bias"],
             "self_attn.out_proj.weight": P[p + "attn.c_proj.weight"].T,
             "self_attn.out_proj.bias": P[p + "attn.c_proj.bias"],
             "linear1.weight": P[p + "mlp.c_fc.weight"].T, "linear1.bias": P[p + "mlp.c_fc.bias"],
             "linear2.weight": P[p + "mlp.c_proj.weight"].T, "linear2.bias": P[p + "mlp.c_proj.bias"],
             "norm1.weight": P[p + "ln_1.weight"], "norm1.bias": P[p + "ln_1.bias"],
             "norm2.weight": P[p + "ln_2.weight"], "norm2.bias": P[p + "ln_2.bias"]}
    else:
        lay = nn.TransformerEncoderLayer(d, BERT["n_head"], BERT["f"], dropout=0.0, activation="gelu",
                                         layer_norm_eps=BERT["eps"], batch_first=True, norm_first=False)
        p = f"{BP}{i}."
        s = p + "attention.self."
        w = {"self_attn.in_proj_weight": torch.cat([P[s + n + ".weight"] for n in ("query", "key", "value")]),
             "self_attn.in_proj_bias": torch.cat([P[s + n + ".bias"] for n in ("query", "key", "value")]),
             "self_attn.out_proj.weight": P[p + "attention.output.dense.weight"],
             "self_attn.out_proj.bias": P[p + "attention.output.dense.bias"],
             "linear1.weight": P[p + "intermediate.dense.weight"], "linear1.bias": P[p + "intermediate.dense.bias"],
             "linear2.weight": P[p + "output.dense.weight"], "linear2.bias": P[p + "output.dense.bias"],
             "norm1.weight": P[p + "attention.output.LayerNorm.weight"],
             "norm1.bias": P[p + "attention.output.LayerNorm.bias"],
             "norm2.weight": P[p + "output.LayerNorm.weight"], "norm2.bias": P[p + "output.LayerNorm.bias"]}
    lay = lay.double()
    sd = lay.state_dict()
    assert set(sd) == set(w), set(sd) ^ set(w)
    lay.load_state_dict({k: v.contiguous() for k, v in w.items()})
    lay.train()  # dropout is 0; train mode keeps torch off its fused fast path
    with torch.no_grad():
        if prefix_kind == "gpt2":
            y = lay(x[None], src_mask=~allowed)  # bool mask: True = blocked
        else:
            # BERT mask here is a pure key-padding mask: every row has the same allowed columns
            y = lay(x[None], src_key_padding_mask=~allowed[0][None])
    return y[0]


# ----------------------------------------------------------------------------- main

def f32(t):
    return t.detach().to(torch.float32).contiguous()


def dump_size(path):
    return os.path.getsize(path)


def make_decoder():
    print("decoder (rmt.md 1.3, GPT-2 backbone)")
    dr = Draw(20240601)
    P32 = gpt2_params(dr)
    m, s, N = 3, 6, 15
    # learned initial memory: randn(m, d) * std(wte), drawn in float32
    P32["memory"] = (dr.randn(m, GPT2["d"]) * P32["wte.weight"].std()).to(torch.float32)
    tokens = dr.ints(N, 0, GPT2["V"])
    P = {k: v.to(F64) for k, v in P32.items()}
    mem0 = P["memory"]

    segs, logits, final_mem = decoder_run(P, tokens, s, mem0, "causal")
    bsegs, blogits, bfinal = decoder_run(P, tokens, s, mem0, "bidir")
    full_hidden = gpt2_hidden(P, P["wte.weight"][tokens], causal(N))
    full_logits = gpt2_logits(P, full_hidden)
    lm_loss = F.cross_entropy(logits[:-1], tokens[1:])

    # --- self-checks
    bounds = split_left(N, s)
    check_true("decoder split left-aligned 6,6,3", [b - a for a, b in bounds] == [6, 6, 3])
    check_true("decoder split covers tokens in order",
               torch.equal(torch.cat([tokens[a:b] for a, b in bounds]), tokens))
    # m = 0, one segment == plain LM
    z = torch.zeros(0, GPT2["d"], dtype=F64)
    s0, l0, _ = decoder_run(P, tokens, N, z, "causal")
    check("decoder m=0 one segment == full_lm (logits)", l0, full_logits, 1e-13)
    check("decoder m=0 one segment == full_lm (hidden)", s0[0]["hidden"], full_hidden, 1e-13)
    s0b, l0b, _ = decoder_run(P, tokens, N, z, "bidir")
    check("decoder m=0 bidir == full_lm", l0b, full_logits, 1e-13)
    # segment-at-a-time calls == one wrapper call
    mem, man = mem0, []
    for a, b in [(0, 6), (6, 12), (12, 15)]:
        o = decoder_cell(P, mem, tokens[a:b])
        man.append(o["logits"])
        mem = o["mem_out"]
    check("decoder per-segment calls == wrapper (logits)", torch.cat(man), logits, 0.0)
    check("decoder per-segment calls == wrapper (memory)", mem, final_mem, 0.0)
    for k, o in enumerate(segs):
        check_true(f"decoder seg{k}.mem_out == hidden[-m:]", torch.equal(o["mem_out"], o["hidden"][-m:]))
        if k:
            check_true(f"decoder seg{k}.mem_in == seg{k-1}.mem_out", torch.equal(o["mem_in"], segs[k - 1]["mem_out"]))
    # content rows never see the write memory -> [M|x] gives the same logits (generation path)
    mem = mem0
    for k, (a, b) in enumerate(bounds):
        for mode, ss in (("causal", segs), ("bidir", bsegs)):
            nw = decoder_cell(P, ss[k]["mem_in"], tokens[a:b], mode, write=False)
            check(f"decoder seg{k} {mode}: logits without write memory equal", nw["logits"], ss[k]["logits"], 1e-13)
    # block vs torch.nn.TransformerEncoderLayer(norm_first=True, tanh GELU)
    x = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    check("gelu_tanh vs F.gelu(approximate='tanh')", gelu_tanh(x), F.gelu(x, approximate="tanh"), 1e-14)
    check("layer_norm vs F.layer_norm", layer_norm(x, torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64), 1e-5),
          F.layer_norm(x, (4,), eps=1e-5), 1e-14)
    for k, (a, b) in enumerate(bounds):
        for mode in ("causal", "bidir"):
            mi = (segs if mode == "causal" else bsegs)[k]["mem_in"]
            emb = torch.cat([mi, P["wte.weight"][tokens[a:b]], mi])
            A = decoder_mask(b - a, m, mode)
            _, blocks = gpt2_hidden(P, emb, A, return_blocks=True)
            for i in range(GPT2["L"]):
                y = torch_layer_vs(P, "gpt2", i, blocks[i], A, True)
                check(f"gpt2 block {i} seg{k} {mode} vs nn.TransformerEncoderLayer(norm_first)", blocks[i + 1], y, 1e-12)
    dmem = (bfinal - final_mem).abs().max().item()
    check_true("decoder bidir differs visibly from causal", dmem > 1e-2, f"(max|diff| final memory {dmem:.3f})")
    print(f"  logits std {logits.std().item():.3f}, lm_loss {lm_loss.item():.4f}, "
          f"|mem change| seg0 {(segs[0]['mem_out'] - mem0).abs().max().item():.3f}")

    # --- write
    d = os.path.join(OUT, "decoder")
    os.makedirs(d, exist_ok=True)
    cfg = {"model_type": "gpt2", "vocab_size": 37, "n_embd": 16, "n_layer": 2, "n_head": 2,
           "n_positions": 32, "n_inner": 64, "layer_norm_epsilon": 1e-5,
           "activation_function": "gelu_new", "tie_word_embeddings": True,
           "rmt": {"num_mem_tokens": m, "segment_size": s, "layout": "decoder"}}
    write_json(os.path.join(d, "config.json"), cfg)
    save_safetensors(os.path.join(d, "model.safetensors"), P32, {"format": "pt"})
    G = {"tokens": tokens}
    for k, o in enumerate(segs):
        for n in ("mem_in", "hidden", "logits", "mem_out"):
            G[f"seg{k}.{n}"] = f32(o[n])
    for k, o in enumerate(bsegs):
        G[f"bidir.seg{k}.mem_out"] = f32(o["mem_out"])
    G.update({"logits": f32(logits), "final_memory": f32(final_mem), "lm_loss": f32(lm_loss.reshape(1)),
              "full_lm.logits": f32(full_logits), "bidir.logits": f32(blogits),
              "bidir.final_memory": f32(bfinal)})
    save_safetensors(os.path.join(d, "golden.safetensors"), G,
                     {"generator": "tests/reference/rmt_ref.py", "spec": "rmt.md 1.3/1.4",
                      "compute": "float64, stored float32", "segments": "6,6,3 left-aligned"})
    return [os.path.join(d, f) for f in ("config.json", "model.safetensors", "golden.safetensors")], (P32, G)


def make_encoder():
    print("encoder (rmt.md 1.2, BERT backbone)")
    dr = Draw(20240602)
    P32 = bert_params(dr)
    m, input_size, N = BERT["m"], BERT["input_size"], 23
    seg_size = input_size - m - 3
    tokens = dr.ints(N, 3, BERT["V"])
    label = dr.ints(1, 0, BERT["labels"])
    P = {k: v.to(F64) for k, v in P32.items()}

    segs = encoder_run(P, tokens, m, input_size)
    loss = F.cross_entropy(segs[-1]["logits"][None], label)
    plain_ids = torch.tensor([CLS] + tokens[:11].tolist() + [SEP] + [PAD] * 3, dtype=torch.int64)
    plain = bert_forward(P, plain_ids, return_layers=True)

    # --- self-checks
    bounds = split_right(N, seg_size)
    check_true("encoder segment_size = input_size - m - 3 = 10", seg_size == 10)
    check_true("encoder split right-aligned 3,10,10", [b - a for a, b in bounds] == [3, 10, 10])
    check_true("encoder split covers tokens in order",
               torch.equal(torch.cat([tokens[a:b] for a, b in bounds]), tokens))
    check_true("encoder seg0 layout", segs[0]["input_ids"].tolist() ==
               [1, 37, 38, 39, 2] + tokens[:3].tolist() + [2] + [0] * 7)
    check_true("encoder seg0.mem_in == word_embeddings[37:40]",
               torch.equal(segs[0]["mem_in"], P["bert.embeddings.word_embeddings.weight"][37:40]))
    # first segment: inserting memory == plain lookup of ids 37..39
    o_plain0 = bert_forward(P, segs[0]["input_ids"])
    check("encoder seg0 == plain BERT on its input_ids (memory = vocab rows)", segs[0]["hidden"], o_plain0["hidden"], 0.0)
    # m = 0, one segment == plain model on [CLS][SEP] x [SEP] PAD..
    z = torch.zeros(0, BERT["d"], dtype=F64)
    x11 = tokens[:11]
    c0 = encoder_cell(P, z, x11, input_size)
    ids0 = torch.tensor([CLS, SEP] + x11.tolist() + [SEP] + [PAD] * 2, dtype=torch.int64)
    check_true("encoder m=0 layout [CLS][SEP]x[SEP]PAD", torch.equal(c0["input_ids"], ids0))
    p0 = bert_forward(P, ids0)
    check("encoder m=0 one segment == plain BERT (hidden)", c0["hidden"], p0["hidden"], 1e-13)
    check("encoder m=0 one segment == plain BERT (logits)", c0["logits"], p0["logits"], 1e-13)
    # segment-at-a-time calls == one wrapper call
    mem = P["bert.embeddings.word_embeddings.weight"][37:40]
    for a, b in [(0, 3), (3, 13), (13, 23)]:
        o = encoder_cell(P, mem, tokens[a:b], input_size)
        mem = o["mem_out"]
    check("encoder per-segment calls == wrapper (logits)", o["logits"], segs[-1]["logits"], 0.0)
    check("encoder per-segment calls == wrapper (memory)", mem, segs[-1]["mem_out"], 0.0)
    for k, o in enumerate(segs):
        check_true(f"encoder seg{k}.mem_out == hidden[1:4]", torch.equal(o["mem_out"], o["hidden"][1:4]))
        if k:
            check_true(f"encoder seg{k}.mem_in == seg{k-1}.mem_out", torch.equal(o["mem_in"], segs[k - 1]["mem_out"]))
    # BERT layer vs torch.nn.TransformerEncoderLayer(norm_first=False, erf GELU, eps 1e-12)
    x = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    check("gelu_erf vs F.gelu", gelu_erf(x), F.gelu(x), 1e-14)
    for name, ids, mem in [("plain", plain_ids, None)] + [(f"seg{k}", o["input_ids"], o["mem_in"]) for k, o in enumerate(segs)]:
        o = bert_forward(P, ids, mem, return_layers=True)
        allowed = (ids != PAD)[None, :].expand(ids.numel(), ids.numel())
        for i in range(BERT["L"]):
            y = torch_layer_vs(P, "bert", i, o["layers"][i], allowed, False)
            check(f"bert layer {i} {name} vs nn.TransformerEncoderLayer(post-LN)", o["layers"][i + 1], y, 1e-12)
    dl = (segs[-1]["logits"] - bert_forward(P, segs[-1]["input_ids"])["logits"]).abs().max().item()
    check_true("encoder memory changes last-segment logits visibly", dl > 1e-2, f"(max|diff| vs vocab-row memory {dl:.3f})")
    print(f"  logits {segs[-1]['logits'].tolist()}, loss {loss.item():.4f}")

    # --- write
    d = os.path.join(OUT, "encoder")
    os.makedirs(d, exist_ok=True)
    cfg = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 40,
           "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
           "hidden_act": "gelu", "max_position_embeddings": 16, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12, "num_labels": 6, "pad_token_id": 0,
           "rmt": {"num_mem_tokens": m, "input_size": input_size, "segment_size": seg_size,
                   "layout": "encoder", "cls_token_id": CLS, "sep_token_id": SEP, "pad_token_id": PAD,
                   "segment_alignment": "right"}}
    write_json(os.path.join(d, "config.json"), cfg)
    save_safetensors(os.path.join(d, "model.safetensors"), P32, {"format": "pt"})
    G = {"tokens": tokens, "label": label}
    for k, o in enumerate(segs):
        G[f"seg{k}.input_ids"] = o["input_ids"]
        for n in ("mem_in", "hidden", "logits", "mem_out"):
            G[f"seg{k}.{n}"] = f32(o[n])
    G.update({"logits": f32(segs[-1]["logits"]), "loss": f32(loss.reshape(1)),
              "plain.input_ids": plain_ids, "plain.hidden": f32(plain["hidden"]),
              "plain.pooled": f32(plain["pooled"]), "plain.logits": f32(plain["logits"])})
    save_safetensors(os.path.join(d, "golden.safetensors"), G,
                     {"generator": "tests/reference/rmt_ref.py", "spec": "rmt.md 1.2",
                      "compute": "float64, stored float32", "segments": "3,10,10 right-aligned"})
    return [os.path.join(d, f) for f in ("config.json", "model.safetensors", "golden.safetensors")], (P32, G)


def verify_files(files, P32, G):
    for path in files:
        if not path.endswith(".safetensors"):
            continue
        want = P32 if path.endswith("model.safetensors") else G
        got, meta = load_safetensors(path)
        ok = set(got) == set(want) and all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k])
                                           for k in want)
        check_true(f"round-trip {os.path.relpath(path, ROOT)}", ok, f"({len(got)} tensors)")


def main():
    torch.set_num_threads(1)
    all_files = []
    for make in (make_decoder, make_encoder):
        files, (P32, G) = make()
        verify_files(files, P32, G)
        all_files += files
    total = 0
    print("files:")
    for p in all_files:
        n = dump_size(p)
        total += n
        print(f"  {os.path.relpath(p, ROOT)}: {n} bytes")
    print(f"  total {total} bytes")
    assert total < 300 * 1024
    bad = [c for c in CHECKS if not c[3]]
    print(f"self-checks: {len(CHECKS) - len(bad)}/{len(CHECKS)} passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
