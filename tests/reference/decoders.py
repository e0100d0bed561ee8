#!/usr/bin/python3
"""Independent PyTorch reference for engram's decoder golden fixtures.

Regenerate (deterministic, fixed seeds; needs only torch + numpy):

    cd /work/main && /usr/bin/python3 tests/reference/decoders.py

This script is a second opinion written from the documented behaviour of
Hugging Face's LlamaForCausalLM / GPT2LMHeadModel and RoPE scaling rules. It
does not import `transformers` or `safetensors`; it carries its own small
safetensors writer/reader. It rewrites every file listed below, and nothing
else.

Numerics
--------
* Parameters are drawn in float32 (llama_tiny, gpt2_tiny) or drawn in float32
  and rounded to bfloat16 with round-to-nearest-even (llama_tiny_variant). The
  stored values are exactly the values used: every forward pass is computed in
  float64 from the stored parameters, promoted exactly.
* RoPE angles are computed in float64: angle = pos * inv_freq with inv_freq in
  float64 (NOT the float32-rounded inv_freq that is stored). At large positions
  (40000) a float32 angle differs by ~1e-3 rad, so a C++ test should build the
  angle in double (or use a loose tolerance there).
* Goldens are stored rounded to float32 (F32). Token ids are I64.
* Random init: projections / embeddings ~ N(0, 0.2^2); norm weights
  1 + 0.1*N(0,1); biases 0.1*N(0,1).

Files and tensors
-----------------
tests/fixtures/llama_tiny/
    config.json         HF LlamaConfig keys: vocab 67, hidden 32, inter 48,
                        2 layers, 4 heads, 2 kv heads (GQA), head_dim 8,
                        rms_norm_eps 1e-5, rope_theta 1e4, rope_scaling null,
                        tie_word_embeddings false.
    model.safetensors   F32, HF names:
        model.embed_tokens.weight                     [V, C]
        model.layers.{i}.input_layernorm.weight       [C]
        model.layers.{i}.self_attn.q_proj.weight      [H*hd, C]
        model.layers.{i}.self_attn.k_proj.weight      [Hkv*hd, C]
        model.layers.{i}.self_attn.v_proj.weight      [Hkv*hd, C]
        model.layers.{i}.self_attn.o_proj.weight      [C, H*hd]
        model.layers.{i}.post_attention_layernorm.weight [C]
        model.layers.{i}.mlp.gate_proj.weight         [I, C]
        model.layers.{i}.mlp.up_proj.weight           [I, C]
        model.layers.{i}.mlp.down_proj.weight         [C, I]
        model.norm.weight                             [C]
        lm_head.weight                                [V, C]
      Linear weights are [out, in]: y = x @ W^T. No biases.
    golden.safetensors
        tokens               I64 [23]   ids in [0, V), positions 0..22
        logits               F32 [23, V] causal LM logits at every position
        hidden_after_layer0  F32 [23, C] residual stream after block 0
tests/fixtures/llama_tiny_variant/
    Same family: vocab 59, hidden 32, inter 40, 3 layers, 4 heads, 1 kv head
    (MQA), head_dim 8, rope_theta 5e5, rope_scaling {"type":"linear",
    "factor":2.0} (angle = (pos / 2) * inv_freq), tie_word_embeddings true
    (no lm_head.weight; logits = h @ embed_tokens^T), weights BF16,
    torch_dtype "bfloat16". Checkpoint sharded:
        model-00001-of-00002.safetensors  embed + layers 0,1
        model-00002-of-00002.safetensors  layer 2 + model.norm.weight
        model.safetensors.index.json      {"metadata":{"total_size":N},
                                           "weight_map":{name:file}}
      (total_size = sum of tensor data bytes over both shards.)
    golden.safetensors: tokens I64 [31], logits F32 [31, V].
tests/fixtures/gpt2_tiny/
    config.json   HF GPT2Config keys: vocab 71, n_embd 32, n_layer 2, n_head 4,
                  n_positions 64, n_inner null (=4*C), layer_norm_epsilon
                  1e-5, activation gelu_new, tie_word_embeddings true.
    model.safetensors  F32, HF GPT-2 checkpoint names (no "transformer."):
        wte.weight [V, C], wpe.weight [n_positions, C],
        h.{i}.ln_1.{weight,bias} [C],
        h.{i}.attn.c_attn.weight [C, 3C] (Conv1D: [in, out], y = x W + b;
                                         output columns are q | k | v,
                                         each split into heads contiguously),
        h.{i}.attn.c_attn.bias [3C],
        h.{i}.attn.c_proj.{weight [C, C], bias [C]},
        h.{i}.ln_2.{weight,bias} [C],
        h.{i}.mlp.c_fc.{weight [C, 4C], bias [4C]},
        h.{i}.mlp.c_proj.{weight [4C, C], bias [C]},
        ln_f.{weight,bias} [C].
      No lm_head tensor: logits = ln_f(h) @ wte^T.
    golden.safetensors: tokens I64 [29] (positions 0..28), logits F32 [29, V].
tests/fixtures/rope_cases.safetensors
    positions            I64 [7] = [0, 1, 2, 7, 100, 4095, 40000]
    x                    F32 [7, 16]  (row r is at positions[r]); the rotated
                                      goldens are computed from this F32 x
    inv_freq.default     F32 [8]  theta^(-2i/d), theta 1e4, d 16
    inv_freq.linear      F32 [8]  inv_freq.default / 4
    inv_freq.ntk         F32 [8]  base' = 1e4 * (alpha*factor-(alpha-1))^(d/(d-2)),
                                  factor 4, alpha 2; base'^(-2i/d)
    inv_freq.llama3      F32 [8]  HF rope_type "llama3": theta 5e5, factor 8,
                                  low_freq_factor 1, high_freq_factor 4,
                                  original_max_position_embeddings 8192
    rotate_half.default  F32 [7,16]  pairs (i, i+d/2), inv_freq.default
    interleaved.default  F32 [7,16]  pairs (2i, 2i+1) (GPT-J), same angles
    rotate_half.llama3   F32 [7,16]  pairs (i, i+d/2), inv_freq.llama3
    __metadata__ records every parameter.

Semantics (Llama): h = embed[tok]; per block: h += o(attn(rmsnorm(h)));
h += down(silu(gate(n)) * up(n)) with n = rmsnorm(h); logits =
lm_head(rmsnorm_final(h)). rmsnorm(x) = x * rsqrt(mean(x^2) + eps) * w.
RoPE rotate-half on q and k (pair i with i + hd/2, freq index i), inv_freq =
theta^(-2i/hd). Query head h uses kv head h // (H / Hkv). Scores QK^T/sqrt(hd),
causal (key pos <= query pos), softmax, times V, heads concatenated in head
order then o_proj.
Semantics (GPT-2): h = wte[tok] + wpe[pos]; per block: h += c_proj(attn(ln_1(h)));
h += mlp.c_proj(gelu_new(c_fc(ln_2(h)))); logits = ln_f(h) @ wte^T. LayerNorm
uses the biased variance; gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))).

Self-checks (asserted, printed): safetensors round trip and layout; bf16
rounding vs torch; vectorised attention vs a plain Python loop (1e-12);
full causal forward vs prefix recomputation and vs a KV-cache incremental
decode; GPT-2 block vs torch.nn.TransformerEncoderLayer(norm_first=True);
RoPE rotate-half / interleaved vs complex multiplication; linear scaling as
inv_freq/f vs pos/f.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_grad_enabled(False)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")

D64 = torch.float64


# --------------------------------------------------------------------------
# safetensors (minimal writer/reader)
# --------------------------------------------------------------------------

_DT = {  # name -> (numpy dtype of the raw little-endian storage, itemsize)
    "F32": (np.dtype("<f4"), 4),
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),
    "BF16": (np.dtype("<u2"), 2),  # raw bf16 bits
}


def bf16_bits(a32):
    """float32 array -> uint16 bf16 bits, round-to-nearest-even (finite inputs)."""
    a32 = np.ascontiguousarray(a32, dtype=np.float32)
    assert np.all(np.isfinite(a32))
    u = a32.view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class T:
    """A tensor to store: dtype name + raw numpy array in storage form."""

    def __init__(self, dtype, arr):
        self.dtype = dtype
        want = _DT[dtype][0]
        self.arr = np.ascontiguousarray(np.asarray(arr).astype(want, copy=False))
        assert self.arr.dtype == want

    @property
    def nbytes(self):
        return self.arr.nbytes


def f32(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return T("F32", np.asarray(x, dtype=np.float64).astype(np.float32))


def i64(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return T("I64", np.asarray(x).astype(np.int64))


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> T. Layout: sorted by (itemsize desc, name), contiguous."""
    names = sorted(tensors, key=lambda n: (-_DT[tensors[n].dtype][1], n))
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for n in names:
        t = tensors[n]
        header[n] = {"dtype": t.dtype, "shape": list(t.arr.shape),
                     "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in names:
            f.write(tensors[n].arr.tobytes(order="C"))
    return off  # bytes of tensor data


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8:9] == b"{"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    buf = raw[8 + n:]
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    pos = 0
    for b, e, k in spans:
        assert b == pos, ("hole/overlap", k)
        pos = e
    assert pos == len(buf), "buffer must end at EOF"
    out = {}
    for k, v in header.items():
        dt, isz = _DT[v["dtype"]]
        b, e = v["data_offsets"]
        cnt = int(np.prod(v["shape"])) if v["shape"] else 1
        assert e - b == cnt * isz
        a = np.frombuffer(buf[b:e], dtype=dt).reshape(v["shape"])
        out[k] = (v["dtype"], a)
    return out, meta


def check_roundtrip(path, tensors):
    got, _ = read_safetensors(path)
    assert set(got) == set(tensors), path
    for k, t in tensors.items():
        dt, a = got[k]
        assert dt == t.dtype and a.shape == t.arr.shape and np.array_equal(a, t.arr), (path, k)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------
# parameter drawing
# --------------------------------------------------------------------------

class Draw:
    def __init__(self, seed, bf16=False):
        self.rng = np.random.default_rng(seed)
        self.bf16 = bf16

    def _finish(self, a32):
        """Return (stored T, float64 torch tensor of exactly the stored values)."""
        a32 = a32.astype(np.float32)
        if self.bf16:
            bits = bf16_bits(a32)
            vals = bf16_to_f32(bits)
            return T("BF16", bits), torch.from_numpy(vals.astype(np.float64))
        return T("F32", a32), torch.from_numpy(a32.astype(np.float64))

    def proj(self, *shape):
        return self._finish(0.2 * self.rng.standard_normal(shape))

    def norm(self, n):
        return self._finish(1.0 + 0.1 * self.rng.standard_normal(n))

    def bias(self, n):
        return self._finish(0.1 * self.rng.standard_normal(n))

    def tokens(self, n, vocab):
        return torch.from_numpy(self.rng.integers(0, vocab, size=n).astype(np.int64))


# --------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------

def inv_freq_default(d, theta):
    i = torch.arange(0, d // 2, dtype=D64)
    return theta ** (-2.0 * i / d)


def inv_freq_ntk(d, theta, factor, alpha):
    base = theta * (alpha * factor - (alpha - 1.0)) ** (d / (d - 2.0))
    return inv_freq_default(d, base), base


def inv_freq_llama3(d, theta, factor, low_freq_factor, high_freq_factor, old_ctx):
    """HF rope_type "llama3" (Llama 3.1), restated.

    wavelength w = 2*pi / f for each base frequency f.
      w < old_ctx / high_freq_factor  -> keep f             (high frequencies)
      w > old_ctx / low_freq_factor   -> f / factor         (low frequencies)
      otherwise, with s = (old_ctx / w - low) / (high - low):
                                         (1 - s) * f / factor + s * f
    """
    f = inv_freq_default(d, theta)
    w = 2.0 * math.pi / f
    short_w = old_ctx / high_freq_factor
    long_w = old_ctx / low_freq_factor
    out = torch.empty_like(f)
    for j in range(f.numel()):
        fj, wj = f[j].item(), w[j].item()
        if wj < short_w:
            out[j] = fj
        elif wj > long_w:
            out[j] = fj / factor
        else:
            s = (old_ctx / wj - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out[j] = (1.0 - s) * fj / factor + s * fj
    return out


def rope_angles(pos, inv_freq, pos_div=1.0):
    """pos [T] (int/float), inv_freq [d/2] -> angles [T, d/2] float64."""
    p = pos.to(D64) / pos_div
    return p[:, None] * inv_freq[None, :]


def rope_rotate_half(x, ang):
    """x [..., T, d] (or [T, ..., d] via broadcasting of ang [T,1,d/2]); pairs (i, i+d/2)."""
    d = x.shape[-1]
    c, s = torch.cos(ang), torch.sin(ang)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def rope_interleaved(x, ang):
    c, s = torch.cos(ang), torch.sin(ang)
    xe, xo = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = xe * c - xo * s
    out[..., 1::2] = xo * c + xe * s
    return out


def rope_complex(x, ang, interleaved):
    """Second method: multiply complex numbers by exp(i*angle)."""
    d = x.shape[-1]
    if interleaved:
        z = torch.complex(x[..., 0::2], x[..., 1::2])
    else:
        z = torch.complex(x[..., : d // 2], x[..., d // 2:])
    z = z * torch.polar(torch.ones_like(ang), ang)
    if interleaved:
        return torch.stack([z.real, z.imag], dim=-1).reshape(x.shape)
    return torch.cat([z.real, z.imag], dim=-1)


# --------------------------------------------------------------------------
# attention (shared by both families)
# --------------------------------------------------------------------------

def attention(q, k, v, q_pos, k_pos):
    """q [T, H, d], k/v [S, Hkv, d]; causal by position (k_pos <= q_pos).
    Query head h uses kv head h // (H // Hkv). Returns [T, H*d]."""
    T_, H, d = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    kk = k.repeat_interleave(g, dim=1)  # [S, H, d]: head h -> kv h // g
    vv = v.repeat_interleave(g, dim=1)
    scores = torch.einsum("thd,shd->hts", q, kk) / math.sqrt(d)
    mask = k_pos[None, :] <= q_pos[:, None]  # [T, S]
    scores = scores.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = torch.einsum("hts,shd->thd", p, vv)
    return o.reshape(T_, H * d)


def attention_loop(q, k, v, q_pos, k_pos):
    """Plain materialised softmax, scalar Python loops."""
    T_, H, d = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    qn, kn, vn = q.tolist(), k.tolist(), v.tolist()
    qp, kp = q_pos.tolist(), k_pos.tolist()
    out = [[0.0] * (H * d) for _ in range(T_)]
    for t in range(T_):
        for h in range(H):
            kvh = h // g
            js = [j for j in range(len(kp)) if kp[j] <= qp[t]]
            sc = [sum(qn[t][h][e] * kn[j][kvh][e] for e in range(d)) / math.sqrt(d) for j in js]
            m = max(sc)
            w = [math.exp(s - m) for s in sc]
            z = sum(w)
            for e in range(d):
                out[t][h * d + e] = sum(w[i] * vn[j][kvh][e] for i, j in enumerate(js)) / z
    return torch.tensor(out, dtype=D64)


ATTN_CHECKED = []


def checked_attention(q, k, v, q_pos, k_pos, tag):
    o = attention(q, k, v, q_pos, k_pos)
    if tag is not None:
        ref = attention_loop(q, k, v, q_pos, k_pos)
        err = (o - ref).abs().max().item()
        assert err < 1e-12, (tag, err)
        ATTN_CHECKED.append((tag, err))
    return o


# --------------------------------------------------------------------------
# Llama
# --------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def silu(x):
    return x / (1.0 + torch.exp(-x))


def make_llama(cfg, seed, bf16):
    dr = Draw(seed, bf16=bf16)
    V, C, I = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    store, P = {}, {}

    def add(name, pair):
        store[name], P[name] = pair

    add("model.embed_tokens.weight", dr.proj(V, C))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", dr.norm(C))
        add(p + "self_attn.q_proj.weight", dr.proj(H * hd, C))
        add(p + "self_attn.k_proj.weight", dr.proj(Hkv * hd, C))
        add(p + "self_attn.v_proj.weight", dr.proj(Hkv * hd, C))
        add(p + "self_attn.o_proj.weight", dr.proj(C, H * hd))
        add(p + "post_attention_layernorm.weight", dr.norm(C))
        add(p + "mlp.gate_proj.weight", dr.proj(I, C))
        add(p + "mlp.up_proj.weight", dr.proj(I, C))
        add(p + "mlp.down_proj.weight", dr.proj(C, I))
    add("model.norm.weight", dr.norm(C))
    if not cfg["tie_word_embeddings"]:
        add("lm_head.weight", dr.proj(V, C))
    return dr, store, P


def llama_forward(cfg, P, tokens, start_pos=0, cache=None, check_tag=None):
    """tokens [T] at positions start_pos..start_pos+T-1. cache: list of (K, V) per
    layer (post-RoPE keys), extended in place when given. Returns (logits, hiddens)."""
    H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    rs = cfg.get("rope_scaling")
    pos_div = 1.0
    if rs is not None:
        assert rs["type"] == "linear"
        pos_div = float(rs["factor"])
    inv_freq = inv_freq_default(hd, cfg["rope_theta"])
    T_ = tokens.numel()
    pos = torch.arange(start_pos, start_pos + T_)
    ang = rope_angles(pos, inv_freq, pos_div)[:, None, :]  # [T, 1, hd/2]
    h = P["model.embed_tokens.weight"][tokens]
    hiddens = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rmsnorm(h, P[p + "input_layernorm.weight"], eps)
        q = (x @ P[p + "self_attn.q_proj.weight"].T).reshape(T_, H, hd)
        k = (x @ P[p + "self_attn.k_proj.weight"].T).reshape(T_, Hkv, hd)
        v = (x @ P[p + "self_attn.v_proj.weight"].T).reshape(T_, Hkv, hd)
        q = rope_rotate_half(q, ang)
        k = rope_rotate_half(k, ang)
        if cache is not None:
            if len(cache) <= i:
                cache.append((k, v))
            else:
                cache[i] = (torch.cat([cache[i][0], k]), torch.cat([cache[i][1], v]))
            k, v = cache[i]
        k_pos = torch.arange(0, start_pos + T_) if cache is not None else pos
        a = checked_attention(q, k, v, pos, k_pos, None if check_tag is None else f"{check_tag}.L{i}")
        h = h + a @ P[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, P[p + "post_attention_layernorm.weight"], eps)
        m = silu(x @ P[p + "mlp.gate_proj.weight"].T) * (x @ P[p + "mlp.up_proj.weight"].T)
        h = h + m @ P[p + "mlp.down_proj.weight"].T
        hiddens.append(h)
    h = rmsnorm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    return h @ head.T, hiddens


def consistency_checks(name, fwd, tokens, logits):
    """Full causal forward vs prefix recomputation and vs KV-cache decode."""
    T_ = tokens.numel()
    err_prefix = 0.0
    for t in range(1, T_ + 1):
        lg, _ = fwd(tokens[:t], 0, None)
        err_prefix = max(err_prefix, (lg[-1] - logits[t - 1]).abs().max().item())
        err_prefix = max(err_prefix, (lg - logits[:t]).abs().max().item())
    cache = []
    err_cache = 0.0
    # prefill a chunk of 5, then one token at a time
    lg, _ = fwd(tokens[:5], 0, cache)
    err_cache = max(err_cache, (lg - logits[:5]).abs().max().item())
    for t in range(5, T_):
        lg, _ = fwd(tokens[t:t + 1], t, cache)
        err_cache = max(err_cache, (lg[0] - logits[t]).abs().max().item())
    print(f"  [{name}] prefix-recompute max|diff| = {err_prefix:.3e}, "
          f"kv-cache decode max|diff| = {err_cache:.3e}")
    assert err_prefix < 1e-12 and err_cache < 1e-12
    # causality: changing the last token must not change earlier logits
    t2 = tokens.clone()
    t2[-1] = (t2[-1] + 1) % logits.shape[1]
    lg2, _ = fwd(t2, 0, None)
    assert (lg2[:-1] - logits[:-1]).abs().max().item() < 1e-12
    assert (lg2[-1] - logits[-1]).abs().max().item() > 1e-6


def gen_llama(dirname, cfg, seed, bf16, n_tokens, shards=None):
    out = os.path.join(FIX, dirname)
    os.makedirs(out, exist_ok=True)
    dr, store, P = make_llama(cfg, seed, bf16)
    tokens = dr.tokens(n_tokens, cfg["vocab_size"])
    logits, hiddens = llama_forward(cfg, P, tokens, check_tag=dirname)
    fwd = lambda tk, sp, cache: llama_forward(cfg, P, tk, sp, cache)
    consistency_checks(dirname, fwd, tokens, logits)

    write_json(os.path.join(out, "config.json"), cfg)
    meta = {"format": "pt", "generator": "tests/reference/decoders.py", "seed": str(seed)}
    if shards is None:
        path = os.path.join(out, "model.safetensors")
        write_safetensors(path, store, meta)
        check_roundtrip(path, store)
    else:
        weight_map, total = {}, 0
        for fname, pred in shards:
            part = {k: t for k, t in store.items() if pred(k)}
            path = os.path.join(out, fname)
            total += write_safetensors(path, part, meta)
            check_roundtrip(path, part)
            for k in part:
                assert k not in weight_map
                weight_map[k] = fname
        assert set(weight_map) == set(store)
        write_json(os.path.join(out, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total},
                    "weight_map": dict(sorted(weight_map.items()))})
    g = {"tokens": i64(tokens), "logits": f32(logits)}
    if dirname == "llama_tiny":
        g["hidden_after_layer0"] = f32(hiddens[0])
    gpath = os.path.join(out, "golden.safetensors")
    write_safetensors(gpath, g, {"generator": "tests/reference/decoders.py",
                                 "compute": "float64", "positions": f"0..{n_tokens - 1}"})
    check_roundtrip(gpath, g)
    print(f"  [{dirname}] logits std {logits.std().item():.3f}, "
          f"range [{logits.min().item():.2f}, {logits.max().item():.2f}]")
    return logits


# --------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------

def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def make_gpt2(cfg, seed):
    dr = Draw(seed)
    V, C, NP = cfg["vocab_size"], cfg["n_embd"], cfg["n_positions"]
    I = cfg["n_inner"] or 4 * C
    store, P = {}, {}

    def add(name, pair):
        store[name], P[name] = pair

    add("wte.weight", dr.proj(V, C))
    add("wpe.weight", dr.proj(NP, C))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        add(p + "ln_1.weight", dr.norm(C))
        add(p + "ln_1.bias", dr.bias(C))
        add(p + "attn.c_attn.weight", dr.proj(C, 3 * C))
        add(p + "attn.c_attn.bias", dr.bias(3 * C))
        add(p + "attn.c_proj.weight", dr.proj(C, C))
        add(p + "attn.c_proj.bias", dr.bias(C))
        add(p + "ln_2.weight", dr.norm(C))
        add(p + "ln_2.bias", dr.bias(C))
        add(p + "mlp.c_fc.weight", dr.proj(C, I))
        add(p + "mlp.c_fc.bias", dr.bias(I))
        add(p + "mlp.c_proj.weight", dr.proj(I, C))
        add(p + "mlp.c_proj.bias", dr.bias(C))
    add("ln_f.weight", dr.norm(C))
    add("ln_f.bias", dr.bias(C))
    return dr, store, P


def gpt2_block(cfg, P, i, h, pos, cache=None, check_tag=None):
    C, H = cfg["n_embd"], cfg["n_head"]
    hd = C // H
    eps = cfg["layer_norm_epsilon"]
    T_ = h.shape[0]
    p = f"h.{i}."
    x = layernorm(h, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
    qkv = x @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]  # Conv1D
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (t.reshape(T_, H, hd) for t in (q, k, v))
    k_pos = pos
    if cache is not None:
        if len(cache) <= i:
            cache.append((k, v))
        else:
            cache[i] = (torch.cat([cache[i][0], k]), torch.cat([cache[i][1], v]))
        k, v = cache[i]
        k_pos = torch.arange(0, k.shape[0])
    a = checked_attention(q, k, v, pos, k_pos, check_tag)
    h = h + a @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
    x = layernorm(h, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
    m = gelu_new(x @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
    return h + m @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]


def gpt2_forward(cfg, P, tokens, start_pos=0, cache=None, check_tag=None):
    T_ = tokens.numel()
    pos = torch.arange(start_pos, start_pos + T_)
    assert start_pos + T_ <= cfg["n_positions"]
    h = P["wte.weight"][tokens] + P["wpe.weight"][pos]
    hiddens = []
    for i in range(cfg["n_layer"]):
        h = gpt2_block(cfg, P, i, h, pos, cache, None if check_tag is None else f"{check_tag}.L{i}")
        hiddens.append(h)
    h = layernorm(h, P["ln_f.weight"], P["ln_f.bias"], cfg["layer_norm_epsilon"])
    return h @ P["wte.weight"].T, hiddens


def gpt2_torch_layer_check(cfg, P, tokens):
    """Each block vs torch.nn.TransformerEncoderLayer(norm_first=True) in float64."""
    C, H = cfg["n_embd"], cfg["n_head"]
    I = cfg["n_inner"] or 4 * C
    T_ = tokens.numel()
    pos = torch.arange(T_)
    h = P["wte.weight"][tokens] + P["wpe.weight"][pos]
    mask = torch.triu(torch.full((T_, T_), float("-inf"), dtype=D64), diagonal=1)
    worst = 0.0
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        L = torch.nn.TransformerEncoderLayer(
            d_model=C, nhead=H, dim_feedforward=I, dropout=0.0,
            activation=lambda x: F.gelu(x, approximate="tanh"),
            layer_norm_eps=cfg["layer_norm_epsilon"], batch_first=True,
            norm_first=True).to(D64).eval()
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
        ref = L(h[None], src_mask=mask)[0]
        mine = gpt2_block(cfg, P, i, h, pos)
        err = (ref - mine).abs().max().item()
        worst = max(worst, err)
        assert err < 1e-12, (i, err)
        h = mine
    x = torch.linspace(-6, 6, 1001, dtype=D64)
    gerr = (gelu_new(x) - F.gelu(x, approximate="tanh")).abs().max().item()
    assert gerr < 1e-14
    ln_err = (layernorm(h, P["ln_f.weight"], P["ln_f.bias"], 1e-5)
              - F.layer_norm(h, (C,), P["ln_f.weight"], P["ln_f.bias"], 1e-5)).abs().max().item()
    assert ln_err < 1e-12
    print(f"  [gpt2_tiny] vs nn.TransformerEncoderLayer(norm_first) max|diff| = {worst:.3e}; "
          f"gelu_new vs F.gelu(tanh) {gerr:.1e}; layernorm vs F.layer_norm {ln_err:.1e}")


def gen_gpt2(cfg, seed, n_tokens):
    out = os.path.join(FIX, "gpt2_tiny")
    dr, store, P = make_gpt2(cfg, seed)
    tokens = dr.tokens(n_tokens, cfg["vocab_size"])
    logits, _ = gpt2_forward(cfg, P, tokens, check_tag="gpt2_tiny")
    gpt2_torch_layer_check(cfg, P, tokens)
    fwd = lambda tk, sp, cache: gpt2_forward(cfg, P, tk, sp, cache)
    consistency_checks("gpt2_tiny", fwd, tokens, logits)
    write_json(os.path.join(out, "config.json"), cfg)
    path = os.path.join(out, "model.safetensors")
    write_safetensors(path, store, {"format": "pt", "generator": "tests/reference/decoders.py",
                                    "seed": str(seed)})
    check_roundtrip(path, store)
    g = {"tokens": i64(tokens), "logits": f32(logits)}
    gpath = os.path.join(out, "golden.safetensors")
    write_safetensors(gpath, g, {"generator": "tests/reference/decoders.py",
                                 "compute": "float64", "positions": f"0..{n_tokens - 1}"})
    check_roundtrip(gpath, g)
    print(f"  [gpt2_tiny] logits std {logits.std().item():.3f}, "
          f"range [{logits.min().item():.2f}, {logits.max().item():.2f}]")


# --------------------------------------------------------------------------
# RoPE cases
# --------------------------------------------------------------------------

def gen_rope_cases(seed):
    d = 16
    positions = torch.tensor([0, 1, 2, 7, 100, 4095, 40000], dtype=torch.int64)
    rng = np.random.default_rng(seed)
    x32 = rng.standard_normal((positions.numel(), d)).astype(np.float32)
    x = torch.from_numpy(x32.astype(np.float64))

    theta, lin_factor = 10000.0, 4.0
    ntk_factor, ntk_alpha = 4.0, 2.0
    l3 = dict(theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192)

    f_def = inv_freq_default(d, theta)
    f_lin = f_def / lin_factor
    f_ntk, ntk_base = inv_freq_ntk(d, theta, ntk_factor, ntk_alpha)
    f_l3 = inv_freq_llama3(d, l3["theta"], l3["factor"], l3["low_freq_factor"],
                           l3["high_freq_factor"], l3["original_max_position_embeddings"])

    # -- checks on the frequency formulas
    # linear: inv_freq/f at pos equals inv_freq at pos/f
    a1 = rope_angles(positions, f_lin)
    a2 = rope_angles(positions, f_def, pos_div=lin_factor)
    assert (a1 - a2).abs().max().item() < 1e-9 * 40000
    # llama3 vectorised restatement (as HF writes it with torch.where)
    f0 = inv_freq_default(d, l3["theta"])
    wl = 2 * math.pi / f0
    lo_w = l3["original_max_position_embeddings"] / l3["low_freq_factor"]
    hi_w = l3["original_max_position_embeddings"] / l3["high_freq_factor"]
    base = torch.where(wl > lo_w, f0 / l3["factor"], f0)
    sm = (l3["original_max_position_embeddings"] / wl - l3["low_freq_factor"]) / (
        l3["high_freq_factor"] - l3["low_freq_factor"])
    smooth = (1 - sm) * base / l3["factor"] + sm * base
    med = (wl >= hi_w) & (wl <= lo_w)
    f_l3b = torch.where(med, smooth, base)
    assert (f_l3b - f_l3).abs().max().item() == 0.0
    n_hi, n_lo = int((wl < hi_w).sum()), int((wl > lo_w).sum())
    n_med = d // 2 - n_hi - n_lo
    assert n_hi > 0 and n_lo > 0 and n_med > 0, (n_hi, n_med, n_lo)  # exercise all 3 bands
    # ntk base
    assert abs(ntk_base - theta * 7.0 ** (16.0 / 14.0)) < 1e-6

    ang_def = rope_angles(positions, f_def)
    ang_l3 = rope_angles(positions, f_l3)
    rh_def = rope_rotate_half(x, ang_def)
    il_def = rope_interleaved(x, ang_def)
    rh_l3 = rope_rotate_half(x, ang_l3)

    e = max((rh_def - rope_complex(x, ang_def, False)).abs().max().item(),
            (il_def - rope_complex(x, ang_def, True)).abs().max().item(),
            (rh_l3 - rope_complex(x, ang_l3, False)).abs().max().item())
    assert e < 1e-12, e
    # interleaved == rotate_half on de-interleaved lanes
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    e2 = (rope_rotate_half(x[:, perm], ang_def) - il_def[:, perm]).abs().max().item()
    assert e2 < 1e-12, e2
    # position 0 is identity; norms preserved
    assert (rh_def[0] - x[0]).abs().max().item() == 0.0
    assert (rh_def.norm(dim=-1) - x.norm(dim=-1)).abs().max().item() < 1e-12
    print(f"  [rope_cases] rotate_half/interleaved vs complex {e:.1e}, perm {e2:.1e}; "
          f"llama3 bands hi/med/lo = {n_hi}/{n_med}/{n_lo}; ntk base' = {ntk_base:.6f}")

    tensors = {
        "positions": i64(positions),
        "x": T("F32", x32),
        "inv_freq.default": f32(f_def),
        "inv_freq.linear": f32(f_lin),
        "inv_freq.ntk": f32(f_ntk),
        "inv_freq.llama3": f32(f_l3),
        "rotate_half.default": f32(rh_def),
        "interleaved.default": f32(il_def),
        "rotate_half.llama3": f32(rh_l3),
    }
    meta = {
        "generator": "tests/reference/decoders.py",
        "head_dim": str(d),
        "seed": str(seed),
        "default.theta": repr(theta),
        "linear.theta": repr(theta),
        "linear.factor": repr(lin_factor),
        "ntk.theta": repr(theta),
        "ntk.factor": repr(ntk_factor),
        "ntk.alpha": repr(ntk_alpha),
        "ntk.formula": "base' = theta * (alpha*factor - (alpha-1))^(d/(d-2)); inv_freq = base'^(-2i/d)",
        "ntk.base": repr(ntk_base),
        "llama3.theta": repr(l3["theta"]),
        "llama3.factor": repr(l3["factor"]),
        "llama3.low_freq_factor": repr(l3["low_freq_factor"]),
        "llama3.high_freq_factor": repr(l3["high_freq_factor"]),
        "llama3.original_max_position_embeddings": str(l3["original_max_position_embeddings"]),
        "rotate_half": "pairs (i, i+d/2): y_i = x_i cos - x_{i+d/2} sin, y_{i+d/2} = x_{i+d/2} cos + x_i sin, angle = pos*inv_freq[i]",
        "interleaved": "pairs (2i, 2i+1): y_2i = x_2i cos - x_2i+1 sin, y_2i+1 = x_2i+1 cos + x_2i sin, angle = pos*inv_freq[i]",
        "precision": "inv_freq and angles in float64 (not from the stored F32 inv_freq); results rounded to F32",
    }
    path = os.path.join(FIX, "rope_cases.safetensors")
    write_safetensors(path, tensors, meta)
    check_roundtrip(path, tensors)


# --------------------------------------------------------------------------

LLAMA_TINY = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 67,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
    "max_position_embeddings": 128, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}

LLAMA_VARIANT = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 59,
    "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"type": "linear", "factor": 2.0},
    "max_position_embeddings": 128, "tie_word_embeddings": True, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}

GPT2_TINY = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 71,
    "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "n_inner": None,
    "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
    "tie_word_embeddings": True,
}


def check_bf16():
    rng = np.random.default_rng(7)
    a = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * 3,
        np.array([1.0, -1.0, 0.0, -0.0, 1.00390625, 1.01171875, 3.0e38, 1e-40], np.float32),
        # exact ties: bf16 mantissa lsb 0 / 1 with the dropped half exactly 0x8000
        np.array([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000], np.uint32).view(np.float32),
    ])
    mine = bf16_bits(a)
    ref = torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(mine, ref)
    print(f"  bf16 RNE rounding matches torch on {a.size} values (incl. ties)")


def main():
    print("engram reference fixtures ->", FIX)
    check_bf16()
    gen_llama("llama_tiny", LLAMA_TINY, seed=1001, bf16=False, n_tokens=23)
    gen_llama("llama_tiny_variant", LLAMA_VARIANT, seed=1002, bf16=True, n_tokens=31,
              shards=[("model-00001-of-00002.safetensors",
                       lambda n: n.startswith("model.embed_tokens.")
                       or n.startswith("model.layers.0.") or n.startswith("model.layers.1.")),
                      ("model-00002-of-00002.safetensors",
                       lambda n: n.startswith("model.layers.2.") or n == "model.norm.weight")])
    gen_gpt2(GPT2_TINY, seed=1003, n_tokens=29)
    gen_rope_cases(seed=1004)
    print("  attention vs python loop:", ", ".join(f"{t} {e:.1e}" for t, e in ATTN_CHECKED))
    total = 0
    for dp, _, fs in os.walk(FIX):
        for f in fs:
            p = os.path.join(dp, f)
            if p.startswith(os.path.join(FIX, "")) and (
                    os.path.basename(dp) in ("llama_tiny", "llama_tiny_variant", "gpt2_tiny")
                    or f == "rope_cases.safetensors"):
                sz = os.path.getsize(p)
                total += sz
                print(f"  {os.path.relpath(p, ROOT):60s} {sz:8d} B")
    print(f"  total {total} B")
    assert total < 400 * 1024
    print("all self-checks passed")


if __name__ == "__main__":
    sys.exit(main())
