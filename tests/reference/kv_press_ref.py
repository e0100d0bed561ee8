#!/usr/bin/python3
"""Independent references of two training-free KV-cache scorers of NVIDIA kvpress (issue 12).

Regenerate (deterministic, fixed seed, CPU, float64; torch 1.13 + numpy only; a few seconds):

    cd /work/main && /usr/bin/python3 tests/reference/kv_press_ref.py

Rules restated in my own words from kvpress (kvpress/presses/expected_attention_press.py,
kvpress/presses/keydiff_press.py, kvpress/presses/scorer_press.py, kvpress/presses/generation/
decoding_press.py) and the Expected Attention paper (Devoto, Jeblick, Jegou, arXiv 2510.00636);
no engram C++ was read. Writes exactly tests/fixtures/policies/kv_press.safetensors.

Setting
-------
One layer, H = 4 query heads, Hkv = 2 KV heads (GQA group g = 2: query head h reads KV head
h // 2), head_dim d = 8, T = 40 cached tokens at positions 0..39, RoPE rotate_half with theta 1e4
(pairs (i, i + d/2), angle = pos * theta^(-2i/d), angles in float64). The cache holds keys AFTER
RoPE (as a Hugging Face cache does) and values; the queries are given BEFORE RoPE (Expected
Attention models queries before rotation). Budget: keep 16 of the 40 tokens per KV head
(kvpress: compression_ratio 0.6, n_kept = int(T (1 - ratio)) = 16, top-k of the scores).

ExpectedAttention (kvpress ExpectedAttentionPress; defaults n_future_positions 512, n_sink 4,
use_covariance true, use_vnorm true, epsilon 0)
-------------------------------------------------------------------------------------------
  1. Query statistics, per query head h, from the pre-RoPE queries q_t of a window W of tokens:
     mu_h = mean_t q_t,  Sigma_h = (1/|W|) sum_t (q_t - mu_h)(q_t - mu_h)^T   (biased).
     kvpress as a prefill press: W = all prompt tokens except the first n_sink (here positions
     4..39, 36 queries). (kvpress computes them from the hidden states and W_q, which is the same
     thing as statistics of the pre-RoPE queries W_q h.)
  2. Average future rotation: R_p = diag(cos_p) + diag(sin_p) P, with cos_p/sin_p the rotate_half
     tables at position p (cos_p[i] = cos_p[i + d/2] = cos(p theta^(-2i/d))) and P the matrix of
     rotate_half (P x = [-x_2, x_1]); Rbar = mean of R_p over p = T .. T + 511 (the next 512
     positions after the T processed tokens).
  3. mu'_h = Rbar mu_h,  Sigma'_h = Rbar Sigma_h Rbar^T.
  4. For each non-sink cached key k_n (n = 4..39, post-RoPE) and query head h:
     z_hn = mu'_h . k_n / sqrt(d) + k_n^T Sigma'_h k_n / (2 d)
     (log of E[exp(q . k / sqrt(d))] for q ~ N(mu', Sigma')), a_hn = softmax over n of z_hn
     (over the 36 non-sink keys only).
  5. score_n (per KV head j) = (mean over the g query heads of group j of a_hn + epsilon) * ||v_n||.
  6. The n_sink first tokens get score = (maximum of all scores of the layer, over every head) + 1,
     so they are never evicted.
  Kept set: the 16 highest scores per KV head (the 4 sinks + 12 others).
  Variant "ea_recent" (a policy fed by recent queries, in the manner of kvpress's DecodingPress,
  whose default buffer is compression_steps = 10 decode steps): statistics from the last 10
  queries only (positions 30..39), everything else as above (future positions still T..T+511,
  sinks still the first 4 cached tokens). Deviations from running kvpress verbatim inside
  DecodingPress, where the press would also drop the first n_sink rows of the 10-row buffer and
  take q_len = 10 (buffer length) as the start of the future positions (DecodingPress's own notes
  say to use the cache length instead): neither is reproduced here.

KeyDiff (kvpress KeyDiffPress, arXiv 2504.15364; no parameters besides the ratio)
--------------------------------------------------------------------------------
  anchor_j = mean over all T cached keys of k_n / ||k_n|| (post-RoPE keys of KV head j);
  score_n = -cos(k_n, anchor_j) = -(k_n . anchor_j) / (||k_n|| ||anchor_j||); no sink handling.
  Kept set: the 16 highest scores (the keys least similar to the anchor).

Tensors (tests/fixtures/policies/kv_press.safetensors; F64 unless said; __metadata__ holds the
configuration as strings)
-----------------------------------------------------------------------------------------
  positions           I64 [40]        0..39
  queries_prerope     F64 [4,40,8]    per query head, before RoPE (q at position t)
  keys_prerope        F64 [2,40,8]    per KV head, before RoPE
  keys                F64 [2,40,8]    = RoPE(keys_prerope) at positions: what the cache holds
  values              F64 [2,40,8]
  ea.Rbar             F64 [8,8]       mean rotation over positions 40..551
  ea.mu               F64 [4,8]       mu'_h (after Rbar)
  ea.cov              F64 [4,8,8]     Sigma'_h (after Rbar)
  ea.probs            F64 [4,36]      a_hn per query head over the non-sink keys n = 4..39
  ea.scores           F64 [2,40]      final scores per KV head (columns 0..3: sinks = max + 1)
  ea.kept             I64 [2,16]      kept token indices per KV head, sorted ascending
  ea_recent.mu/.cov/.probs/.scores/.kept   the same for the recent-window variant
  keydiff.anchor      F64 [2,8]
  keydiff.scores      F64 [2,40]
  keydiff.kept        I64 [2,16]      sorted ascending
  (Scores carry no exact ties except the 4 equal sink scores, which are all kept; the margin
  between the 16th and 17th score of every head is printed and asserted > 1e-6.)

Draws (numpy default_rng(seed), float32 values promoted): per KV head a random offset o_j ~ N(0,1)
(so keys share a direction and KeyDiff is meaningful); keys_prerope = N(0,1) + o_j; queries =
0.7 N(0,1) + 0.5 N(0,1) head mean; values = N(0,1) * U(0.3, 1.7) per token.

Self-checks (asserted, printed): Rbar from explicit per-position rotate_half RoPE of the basis
vectors vs the cos/sin matrix construction; Rbar mu vs the mean of RoPE(mu, p) over p; scores by
scalar loops vs vectorised; the closed-form expected exp-score vs a Monte Carlo estimate with
q ~ N(mu', Sigma') (relative error of the normalised expectation ~1e-2); KeyDiff by loops;
kept sets from argsort vs topk.
"""

import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import decoders as dec  # noqa: E402  (safetensors writer / reader)

torch.set_num_threads(1)
D64 = torch.float64
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "policies", "kv_press.safetensors")
GEN = "tests/reference/kv_press_ref.py"

H, HKV, D, T = 4, 2, 8, 40
THETA = 10000.0
BUDGET = 16
N_FUTURE, N_SINK, EPS_V = 512, 4, 0.0
RECENT = 10

CHECKS = []


def check(name, err, tol):
    ok = err <= tol
    CHECKS.append((name, err, tol, ok))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {err:.3e} (tol {tol:g})")
    assert ok, name


def F64T(x):
    return dec.T("F64", x.detach().cpu().double().numpy())


def cos_sin(pos):
    """rotate_half tables [len(pos), d] (each frequency twice), float64 angles."""
    inv = THETA ** (-2.0 * torch.arange(D // 2, dtype=D64) / D)
    ang = pos.to(D64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], -1)
    return torch.cos(ang), torch.sin(ang)


def rotate_half(x):
    return torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)


def rope(x, pos):
    """x [..., len(pos), d] -> rotated at positions pos."""
    c, s = cos_sin(pos)
    return x * c + rotate_half(x) * s


def avg_rotation(t0):
    pos = torch.arange(t0, t0 + N_FUTURE)
    c, s = cos_sin(pos)                                  # [F, d]
    P = torch.zeros(D, D, dtype=D64)
    P[D // 2:, :D // 2] = torch.eye(D // 2, dtype=D64)
    P[:D // 2, D // 2:] = -torch.eye(D // 2, dtype=D64)
    R = torch.diag_embed(c) + torch.diag_embed(s) @ P   # [F, d, d]
    return R.mean(0), P


def expected_attention(q_pre, keys, values, window):
    """q_pre [H,T,d] (pre-RoPE), keys/values [Hkv,T,d] (keys post-RoPE); window: token indices."""
    q = q_pre[:, window]                                 # [H, W, d]
    mu = q.mean(1)
    cen = q - mu[:, None]
    cov = cen.transpose(1, 2) @ cen / q.shape[1]
    Rbar, _ = avg_rotation(T)
    mu_r = mu @ Rbar.T
    cov_r = Rbar @ cov @ Rbar.T
    g = H // HKV
    kk = keys[:, N_SINK:].repeat_interleave(g, 0)        # [H, T-n_sink, d]
    z = (kk @ mu_r[:, :, None])[..., 0] / math.sqrt(D)
    z = z + torch.einsum("hni,hij,hnj->hn", kk, cov_r, kk) / D / 2
    a = torch.softmax(z, -1)
    sc = a.reshape(HKV, g, -1).mean(1)
    sc = (sc + EPS_V) * values[:, N_SINK:].norm(dim=-1)
    full = torch.cat([torch.full((HKV, N_SINK), sc.max().item() + 1, dtype=D64), sc], 1)
    return {"Rbar": Rbar, "mu": mu_r, "cov": cov_r, "probs": a, "scores": full, "cov_pre": cov, "mu_pre": mu}


def expected_attention_loops(q_pre, keys, values, window):
    """Second formulation: scalar loops, RoPE of the basis for Rbar."""
    Rbar = torch.zeros(D, D, dtype=D64)
    basis = torch.eye(D, dtype=D64)
    for p in range(T, T + N_FUTURE):
        Rbar += rope(basis[:, None, :], torch.tensor([p]))[:, 0, :].T  # column i = R_p e_i
    Rbar /= N_FUTURE
    g = H // HKV
    out = torch.zeros(HKV, T, dtype=D64)
    probs = torch.zeros(H, T - N_SINK, dtype=D64)
    for h in range(H):
        qs = [q_pre[h, t] for t in window]
        mu = sum(qs) / len(qs)
        cov = sum(torch.outer(x - mu, x - mu) for x in qs) / len(qs)
        mu_r = Rbar @ mu
        cov_r = Rbar @ cov @ Rbar.T
        j = h // g
        z = torch.stack([(mu_r @ keys[j, n]) / math.sqrt(D) + keys[j, n] @ cov_r @ keys[j, n] / (2 * D)
                         for n in range(N_SINK, T)])
        e = torch.exp(z - z.max())
        probs[h] = e / e.sum()
    for j in range(HKV):
        for n in range(N_SINK, T):
            out[j, n] = (sum(probs[h, n - N_SINK] for h in range(j * g, (j + 1) * g)) / g + EPS_V) * \
                torch.sqrt((values[j, n] ** 2).sum())
    out[:, :N_SINK] = out[:, N_SINK:].max() + 1
    return Rbar, probs, out


def keydiff(keys):
    kn = keys / keys.norm(dim=-1, keepdim=True)
    anchor = kn.mean(1, keepdim=True)                    # [Hkv, 1, d]
    sc = -torch.nn.functional.cosine_similarity(keys, anchor, dim=-1)
    return anchor[:, 0], sc


def keydiff_loops(keys):
    out = torch.zeros(HKV, T, dtype=D64)
    for j in range(HKV):
        a = sum(keys[j, n] / math.sqrt(float((keys[j, n] ** 2).sum())) for n in range(T)) / T
        for n in range(T):
            k = keys[j, n]
            out[j, n] = -float((k * a).sum()) / math.sqrt(float((k * k).sum()) * float((a * a).sum()))
    return out


def kept(scores, tag):
    top = scores.topk(BUDGET, dim=-1).indices.sort(-1).values
    arg = torch.argsort(scores, dim=-1, descending=True)[:, :BUDGET].sort(-1).values
    assert torch.equal(top, arg), tag
    srt = scores.sort(-1, descending=True).values
    margin = (srt[:, BUDGET - 1] - srt[:, BUDGET]).min().item()
    print(f"  {tag}: kept {top.tolist()}  (min margin between 16th and 17th score {margin:.3e})")
    assert margin > 1e-6, tag
    return top


def main():
    print("engram kvpress scorer references ->", OUT)
    rng = np.random.default_rng(12012)

    def draw(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32).astype(np.float64))

    off = draw(HKV, 1, D)
    keys_pre = draw(HKV, T, D) + off
    qmean = draw(H, 1, D)
    q_pre = 0.7 * draw(H, T, D) + 0.5 * qmean
    vscale = torch.from_numpy(rng.uniform(0.3, 1.7, size=(HKV, T, 1)).astype(np.float32).astype(np.float64))
    values = draw(HKV, T, D) * vscale
    pos = torch.arange(T)
    keys = rope(keys_pre, pos)

    # --- ExpectedAttention
    win_all = list(range(N_SINK, T))
    win_recent = list(range(T - RECENT, T))
    ea = expected_attention(q_pre, keys, values, win_all)
    ear = expected_attention(q_pre, keys, values, win_recent)
    Rl, pl, sl = expected_attention_loops(q_pre, keys, values, win_all)
    check("EA Rbar: cos/sin matrix vs RoPE of the basis", (ea["Rbar"] - Rl).abs().max().item(), 1e-14)
    mu_alt = torch.stack([rope(ea["mu_pre"][:, None, :], torch.tensor([p]))[:, 0] for p in range(T, T + N_FUTURE)]).mean(0)
    check("EA Rbar mu vs mean over p of RoPE(mu, p)", (mu_alt - ea["mu"]).abs().max().item(), 1e-14)
    check("EA probs: vectorised vs loops", (pl - ea["probs"]).abs().max().item(), 1e-14)
    check("EA scores: vectorised vs loops", (sl - ea["scores"]).abs().max().item(), 1e-14)
    _, plr, slr = expected_attention_loops(q_pre, keys, values, win_recent)
    check("EA recent scores: vectorised vs loops", (slr - ear["scores"]).abs().max().item(), 1e-14)
    # Monte Carlo: E[exp(q.k/sqrt d)] with q ~ N(mu', Sigma') for head 0 vs exp of the closed form
    g = torch.Generator().manual_seed(5)
    Lc = torch.linalg.cholesky(ea["cov"][0] + 1e-12 * torch.eye(D, dtype=D64))
    qs = ea["mu"][0] + torch.randn(400000, D, generator=g, dtype=D64) @ Lc.T
    kk = keys[0, N_SINK:]
    mc = torch.exp(qs @ kk.T / math.sqrt(D)).mean(0)
    mc = mc / mc.sum()
    check("EA closed-form expectation vs Monte Carlo (head 0, normalised, max rel)",
          ((mc - ea["probs"][0]).abs() / ea["probs"][0]).max().item(), 3e-2)
    # KeyDiff
    anchor, kd = keydiff(keys)
    check("KeyDiff: cosine_similarity vs loops", (kd - keydiff_loops(keys)).abs().max().item(), 1e-14)
    # kept sets
    ea_kept = kept(ea["scores"], "ea")
    ear_kept = kept(ear["scores"], "ea_recent")
    kd_kept = kept(kd, "keydiff")
    assert all(set(range(N_SINK)) <= set(r) for r in ea_kept.tolist() + ear_kept.tolist())
    diff = sum(len(set(a) ^ set(b)) for a, b in zip(ea_kept.tolist(), ear_kept.tolist()))
    print(f"  ea vs ea_recent kept sets differ in {diff} indices; ea vs keydiff in "
          f"{sum(len(set(a) ^ set(b)) for a, b in zip(ea_kept.tolist(), kd_kept.tolist()))}")

    Tn = {"positions": dec.i64(pos), "queries_prerope": F64T(q_pre), "keys_prerope": F64T(keys_pre),
          "keys": F64T(keys), "values": F64T(values), "ea.Rbar": F64T(ea["Rbar"])}
    for tag, r, kp in (("ea", ea, ea_kept), ("ea_recent", ear, ear_kept)):
        for n in ("mu", "cov", "probs", "scores"):
            Tn[f"{tag}.{n}"] = F64T(r[n])
        Tn[f"{tag}.kept"] = dec.i64(kp)
    Tn["keydiff.anchor"] = F64T(anchor)
    Tn["keydiff.scores"] = F64T(kd)
    Tn["keydiff.kept"] = dec.i64(kd_kept)
    meta = {"generator": GEN, "compute": "float64", "seed": "12012", "num_attention_heads": str(H),
            "num_key_value_heads": str(HKV), "head_dim": str(D), "cached_tokens": str(T),
            "rope_theta": repr(THETA), "rope": "rotate_half, angles float64", "budget": str(BUDGET),
            "ea.n_future_positions": str(N_FUTURE), "ea.n_sink": str(N_SINK), "ea.epsilon": repr(EPS_V),
            "ea.use_covariance": "true", "ea.use_vnorm": "true", "ea.window": f"{N_SINK}..{T - 1}",
            "ea_recent.window": f"{T - RECENT}..{T - 1}", "ea.future_positions": f"{T}..{T + N_FUTURE - 1}",
            "ea.sink_score": "max over all scores + 1", "keydiff": "score = -cos(k, mean of unit keys)"}
    dec.write_safetensors(OUT, Tn, meta)
    dec.check_roundtrip(OUT, Tn)
    print(f"  wrote {os.path.relpath(OUT, ROOT)} ({os.path.getsize(OUT)} bytes, {len(Tn)} tensors)")
    bad = [c for c in CHECKS if not c[3]]
    print(f"self-checks: {len(CHECKS) - len(bad)}/{len(CHECKS)} passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
