#!/usr/bin/python3
"""Independent PyTorch autograd reference for the OUTER gradients of TTT-Linear / TTT-MLP (issue 11).

Regenerate (deterministic, fixed seeds, CPU, float64; torch 1.13 + numpy only; a few seconds):

    cd /work/main && /usr/bin/python3 tests/reference/ttt_grad_ref.py

The forward is tests/reference/ttt_ref.py (written from /work/shared/reference/ttt.md, independently
of engram's C++; its module docstring states every convention: interleaved RoPE at position t mod 16
with float32 angles, lr gate, token scale clamp, dual/primal forms, Mamba backbone convs and gate).
This script differentiates that forward with autograd, i.e. THROUGH the inner gradient step: the
inner gradient G = lnL2grad(f_res(K; W0), V - K) (ttt.md 1.3) is a differentiable function of the
outer weights, so the outer gradient contains the second-order path. It rewrites exactly the files
listed below. safetensors I/O comes from tests/reference/decoders.py.

Sizes: ttt_ref.py's layer-fixture configuration, C = 32, H = 4, d = 8, I = 64, mini-batch b = 16,
rope_theta 1e4, rms_norm_eps 1e-6, inner LN / post_norm eps 1e-6, conv kernel 4, ttt_base_lr 1.0
(linear) / 0.1 (mlp); batch 1, L = 37 = two whole mini-batches (tokens 0..15, 16..31) + a partial
one of 5 (tokens 32..36, token scales s_0..s_4, not committed). F (inner hidden) = d (linear) or 4d.

Numerics: parameters and inputs drawn in float32 (torch.Generator(seed)), stored F32, promoted
exactly; everything computed in float64. Goldens stored F64, token ids I64.
Parameter draws (ttt_ref.random_params): *_proj.weight ~ N(0,1)/sqrt(fan_in); W1 ~ N/sqrt(d);
W2 ~ 0.5 N/sqrt(4d); b1, ttt_norm_bias, post_norm.bias ~ 0.1 N; b2 ~ 0.05 N; norm weights 1 + 0.1 N;
conv weights and biases U(-0.5, 0.5); learnable_ttt_lr_weight ~ N/sqrt(C); learnable_ttt_lr_bias
~ 0.5 N; learnable_token_idx ~ 0.05 N with [3] = -0.5 (s_3 = max(0, 1/4 - 0.5) = 0: the clamp is
active, so grad.seq_modeling_block.learnable_token_idx[3] is exactly 0). input.x, input.R ~ N(0,1).

Files and tensors
-----------------
tests/fixtures/ttt_grad/ttt_{linear,mlp}_{T,M}.safetensors   (one TTT Block; T = Transformer backbone
    share_qk/use_gate/pre_conv false; M = Mamba backbone, all three true)
  __metadata__: ttt_ref's config keys (hidden_size, num_attention_heads, intermediate_size,
    mini_batch_size, rope_theta, ttt_layer_type, ttt_base_lr, share_qk, use_gate, pre_conv,
    conv_kernel, rms_norm_eps, head_dim, inner_ln_eps, post_norm_eps) + backbone, seq_len, seed,
    loss, generator.
  param.<key>     F32  every Block parameter; <key> = Block state_dict key (relative to
                       model.layers.{i}.), shapes exactly as in ttt_ref.py's docstring:
                       seq_modeling_block.{q,v,o}_proj.weight [32,32]; .k_proj.weight [32,32] (T);
                       .g_proj.weight [32,32] (M); .conv_q/.conv_k .weight [32,1,4], .bias [32] (M);
                       .learnable_token_idx [16]; .learnable_ttt_lr_weight [4,1,32];
                       .learnable_ttt_lr_bias [4,1]; .ttt_norm_weight/.ttt_norm_bias [4,8];
                       .post_norm.weight/.bias [32]; .W1 [4,8,F], .b1 [4,1,F]
                       (+ .W2 [4,F,8], .b2 [4,1,8] for mlp); mlp.gate_proj.weight [64,32],
                       mlp.up_proj.weight [64,32], mlp.down_proj.weight [32,64]; seq_norm.weight [32],
                       ffn_norm.weight [32]; conv.norm.weight [32], conv.conv.weight [32,1,4],
                       conv.conv.bias [32] (M).  18 (linear T), 25 (linear M), 20 (mlp T), 27 (mlp M).
  input.x         F32 [1,37,32]  block input (residual stream, before any norm)
  input.R         F32 [1,37,32]  cotangent
  output.block    F64 [1,37,32]  block output y (one call from a fresh state)
  loss            F64 [1]        sum(y * R)
  grad.x          F64 [1,37,32]  d loss / d x
  grad.<key>      F64            d loss / d param.<key>, same shape, for every param.<key>
                                 (W1/b1/W2/b2 = gradients w.r.t. the INITIAL inner weights W0)
tests/fixtures/ttt_grad/model_linear_T/   (a whole TTT LM: TTTForCausalLM semantics, ttt.md 4.2/6)
  config.json        TTTConfig keys: vocab_size 37, hidden_size 32, intermediate_size 64,
                     num_hidden_layers 2, num_attention_heads 4, mini_batch_size 16, ttt_layer_type
                     linear, ttt_base_lr 1.0, share_qk/use_gate/pre_conv false, rope_theta 1e4,
                     rms_norm_eps 1e-6, tie_word_embeddings true (+ "model_type": "ttt").
  model.safetensors  F32 state_dict: model.embed_tokens.weight [37,32] (~0.5 N),
                     model.layers.{0,1}.<the 18 linear-T block keys above>, model.norm.weight [32];
                     no lm_head.weight (tied: logits = RMSNorm(h; model.norm) @ embed^T).
  golden.safetensors
    tokens           I64 [21]      ids in [0,37); one full mini-batch (0..15) + a partial one (16..20)
    logits           F64 [21,37]
    loss             F64 [1]       mean over t = 0..19 of -log softmax(logits[t])[tokens[t+1]]
    grad.<key>       F64           d loss / d parameter for every key of model.safetensors
                                   (tied embedding: lookup + head uses summed under one name)

Self-checks (asserted, printed): gradients through the dual form (whole and partial mini-batches
by the dual kernel) == through the primal form (token by token) == through streamed calls of
lengths (5, 3, 24, 1, 4) == through a third formulation that takes the inner gradients by
autograd.grad(create_graph=True) of the inner loss straight from the definition (mini-batch GD,
ttt.md 3.1) instead of the closed-form LN+L2 backward; autograd vs central finite differences
(Richardson-extrapolated) on single entries of every parameter kind and along a random
all-parameter direction; the clamp gives an exact zero at learnable_token_idx[3]; detaching the
inner gradient changes the outer gradients at order 1 (so the second-order path is exercised).
"""

import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import decoders as dec  # noqa: E402  (safetensors writer / reader)
import ttt_ref as tr    # noqa: E402  (the independent TTT forward)

tr.ROPE_CORRECTLY_ROUNDED = True  # the float32 table as correctly rounded cos/sin (see ttt_ref.py)

torch.set_grad_enabled(True)  # decoders.py disables autograd at import
torch.set_num_threads(1)

D64 = torch.float64
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "ttt_grad")
GEN = "tests/reference/ttt_grad_ref.py"
L_SEQ = 37
PIECES = (5, 3, 24, 1, 4)

CHECKS = []


def check(name, err, tol):
    ok = err <= tol
    CHECKS.append((name, err, tol, ok))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {err:.3e} (tol {tol:g})")
    assert ok, name


def rel(a, b):
    """max|a - b| / max(max|b|, 1e-3)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-3)).item()


def F64T(x):
    return dec.T("F64", x.detach().cpu().double().numpy())


def F32T(x):
    return dec.T("F32", x.detach().cpu().float().numpy())


# --------------------------------------------------------------------------- third formulation

def inner_run_definition(cfg, st, Q, K, V, lr, s_all, gamma, beta, form):
    """Mini-batch GD from the definition: inner gradients by autograd (create_graph=True, so the
    outer backward differentiates through them), per head, per token. Whole sequence from pos 0."""
    assert st.pos == 0
    H, L, d = Q.shape
    names = cfg.inner_names
    outs = []
    for h in range(H):
        W = {n: st.W[n][h] for n in names}
        ga, be = gamma[h], beta[h]
        rows = []
        for t0 in range(0, L, st.b):
            m = min(st.b, L - t0)
            grads = []
            for j in range(t0, t0 + m):
                loss = tr.inner_loss(cfg, W, K[h, j:j + 1], V[h, j:j + 1], ga, be)
                grads.append(torch.autograd.grad(loss, [W[n] for n in names], create_graph=True))
            acc = [0.0] * len(names)
            for i in range(m):
                acc = [a + lr[h, t0 + i] * g for a, g in zip(acc, grads[i])]
                Wi = {n: W[n] - s_all[i] * a for n, a in zip(names, acc)}
                q = Q[h, t0 + i:t0 + i + 1]
                rows.append(q + tr.layer_norm(tr.f_res(cfg, Wi, q), ga, be))
            if m == st.b:
                W = Wi
        outs.append(torch.cat(rows, 0))
    st.pos += L
    return torch.stack(outs, 0)


class definition_inner_loop:
    """Context: ttt_ref.ttt_layer calls the definition-based inner loop instead of its own."""

    def __enter__(self):
        self.saved = tr.inner_run
        tr.inner_run = inner_run_definition

    def __exit__(self, *a):
        tr.inner_run = self.saved


# --------------------------------------------------------------------------- helpers

def grads_of(loss_fn, leaves, allow_unused=False):
    names = list(leaves)
    Q = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    loss = loss_fn(Q)
    gs = torch.autograd.grad(loss, [Q[n] for n in names], allow_unused=allow_unused)
    return loss.detach(), dict(zip(names, gs))


def fd_checks(tag, loss_fn, P, grads, names, seed, per=2):
    """Central differences with one Richardson step (error O(h^4)); entries + a random direction."""
    g = torch.Generator().manual_seed(seed)

    def deriv(shift, h):
        def d(hh):
            with torch.no_grad():
                return (loss_fn(shift(hh)).item() - loss_fn(shift(-hh)).item()) / (2 * hh)
        return (4 * d(h / 2) - d(h)) / 3

    worst, n_ent = 0.0, 0
    for n in names:
        numel = P[n].numel()
        idxs = torch.randperm(numel, generator=g)[:per].tolist()
        if n.endswith("learnable_token_idx"):
            idxs = sorted(set(idxs + [0, 15]) - {3})  # away from the clamp kink at [3]
        for idx in idxs:
            def shift(hh, n=n, idx=idx):
                Q = dict(P)
                Q[n] = P[n].clone()
                Q[n].reshape(-1)[idx] += hh
                return Q
            fd = deriv(shift, 1e-4)
            an = grads[n].reshape(-1)[idx].item()
            worst = max(worst, abs(fd - an) / max(abs(an), 1e-3))
            n_ent += 1
    check(f"{tag} autograd vs central FD ({n_ent} entries of {len(names)} tensors, rel)", worst, 1e-7)
    D = {k: torch.randn(v.shape, generator=g, dtype=D64) for k, v in P.items()}
    nrm = math.sqrt(sum((x * x).sum().item() for x in D.values()))
    D = {k: x / nrm for k, x in D.items()}
    fd = deriv(lambda hh: {k: P[k] + hh * D[k] for k in P}, 1e-3)
    an = sum((grads[k] * D[k]).sum().item() for k in P)
    check(f"{tag} autograd vs central FD along a random all-parameter direction (rel)", abs(fd - an) / abs(an), 1e-8)


def max_rel(G1, G2):
    return max(rel(G1[k], G2[k]) for k in G2)


# --------------------------------------------------------------------------- layer cases

def layer_case(kind, backbone, seed):
    cfg = tr.make_cfg(kind, backbone)
    name = f"ttt_{kind}_{backbone}"
    print(f"{name} (seed {seed}):")
    gen = torch.Generator().manual_seed(seed)
    p32 = tr.random_params(cfg, gen)
    x32 = torch.randn(L_SEQ, cfg.C, generator=gen, dtype=torch.float32)
    R32 = torch.randn(L_SEQ, cfg.C, generator=gen, dtype=torch.float32)
    R = R32.double()
    leaves = {"x": x32.double()}
    leaves.update({k: v.double() for k, v in p32.items()})

    def run(Q, form="dual", pieces=(L_SEQ,)):
        p = {k: v for k, v in Q.items() if k != "x"}
        out, _ = tr.block_stream(cfg, p, Q["x"], list(pieces), form)
        return out

    def loss_fn(Q, form="dual", pieces=(L_SEQ,)):
        return (run(Q, form, pieces) * R).sum()

    loss, G = grads_of(loss_fn, leaves)
    _, Gp = grads_of(lambda Q: loss_fn(Q, "primal"), leaves)
    _, Gs = grads_of(lambda Q: loss_fn(Q, "dual", PIECES), leaves)
    with definition_inner_loop():
        ldef, Gd = grads_of(loss_fn, leaves)
    check(f"{name} loss: closed-form inner grad vs autograd inner grad", abs(ldef.item() - loss.item()), 1e-11)
    check(f"{name} grads dual vs primal (max rel over tensors)", max_rel(G, Gp), 1e-11)
    check(f"{name} grads one call vs streamed {PIECES}", max_rel(G, Gs), 1e-11)
    check(f"{name} grads closed-form LN+L2 inner grad vs autograd(create_graph) inner grad", max_rel(G, Gd), 1e-11)
    tk = "seq_modeling_block.learnable_token_idx"
    check(f"{name} clamp: grad {tk}[3] is exactly 0", abs(G[tk][3].item()), 0.0)
    # the second-order path matters: with the inner gradients detached the outer gradients differ
    saved = tr.inner_grads
    tr.inner_grads = lambda *a: tuple(t.detach() for t in saved(*a))
    try:
        _, Gn = grads_of(loss_fn, leaves, allow_unused=True)  # v_proj only feeds the inner grads
    finally:
        tr.inner_grads = saved
    w1 = "seq_modeling_block.W1"
    gap = rel(Gn[w1], G[w1])
    print(f"  info: detaching the inner gradient changes grad.{w1} by {gap:.3f} (rel) -> the path is exercised")
    assert gap > 1e-2
    fd_names = [k for k in leaves]
    fd_checks(name, loss_fn, leaves, G, fd_names, seed + 11, per=1)
    with torch.no_grad():
        out = run(leaves)
    print(f"  loss {loss.item():.6f}, |y| max {out.abs().max().item():.2f}, "
          f"|grad.W1| max {G['seq_modeling_block.W1'].abs().max().item():.3e}, "
          f"|grad.x| max {G['x'].abs().max().item():.3f}")

    T = {"input.x": F32T(x32[None]), "input.R": F32T(R32[None]), "output.block": F64T(out[None]),
         "loss": F64T(loss.reshape(1)), "grad.x": F64T(G["x"][None])}
    for k, v in p32.items():
        T["param." + k] = F32T(v)
        T["grad." + k] = F64T(G[k])
    md = tr.cfg_metadata(cfg, {"backbone": backbone, "seq_len": L_SEQ, "seed": seed})
    md.update({"generator": GEN, "loss": "sum(block_output * input.R)", "compute": "float64",
               "batch": "1"})
    path = os.path.join(OUT, name + ".safetensors")
    dec.write_safetensors(path, T, md)
    dec.check_roundtrip(path, T)
    return path


# --------------------------------------------------------------------------- model case

def model_case(seed, V=37, n_layers=2, L=21):
    cfg = tr.make_cfg("linear", "T")
    print(f"model_linear_T (seed {seed}):")
    gen = torch.Generator().manual_seed(seed)
    mp32 = {"model.embed_tokens.weight": 0.5 * torch.randn(V, cfg.C, generator=gen, dtype=torch.float32)}
    for i in range(n_layers):
        for k, v in tr.random_params(cfg, gen).items():
            mp32[f"model.layers.{i}.{k}"] = v
    mp32["model.norm.weight"] = 1.0 + 0.1 * torch.randn(cfg.C, generator=gen, dtype=torch.float32)
    tokens = torch.randint(0, V, (L,), generator=gen, dtype=torch.int64)
    leaves = {k: v.double() for k, v in mp32.items()}

    def logits_of(Q, form="dual", pieces=(L,)):
        return tr.model_stream(cfg, Q, tokens, n_layers, list(pieces), form)

    def loss_fn(Q, form="dual", pieces=(L,)):
        lg = logits_of(Q, form, pieces)
        return -torch.log_softmax(lg[:-1], -1).gather(1, tokens[1:, None]).mean()

    loss, G = grads_of(loss_fn, leaves)
    _, Gp = grads_of(lambda Q: loss_fn(Q, "primal"), leaves)
    _, Gs = grads_of(lambda Q: loss_fn(Q, "dual", (7, 14)), leaves)
    with definition_inner_loop():
        _, Gd = grads_of(loss_fn, leaves)
    with torch.no_grad():
        logits = logits_of(leaves)
        ce = torch.nn.functional.cross_entropy(logits[:-1], tokens[1:])
    check("model CE explicit vs F.cross_entropy", abs(ce.item() - loss.item()), 1e-14)
    check("model grads dual vs primal", max_rel(G, Gp), 1e-11)
    check("model grads one call vs streamed (7, 14)", max_rel(G, Gs), 1e-11)
    check("model grads closed-form vs autograd(create_graph) inner grad", max_rel(G, Gd), 1e-11)
    names = list(leaves)
    fd_checks("model", loss_fn, leaves, G, names[:3] + names[10:13] + names[-3:], seed + 11, per=2)
    print(f"  loss {loss.item():.6f} (ln 37 = {math.log(37):.3f}), |logits| max {logits.abs().max().item():.2f}")

    d = os.path.join(OUT, "model_linear_T")
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
    dec.write_json(os.path.join(d, "config.json"), config)
    M = {k: F32T(v) for k, v in mp32.items()}
    dec.write_safetensors(os.path.join(d, "model.safetensors"), M, {"format": "pt", "generator": GEN})
    dec.check_roundtrip(os.path.join(d, "model.safetensors"), M)
    T = {"tokens": dec.i64(tokens), "logits": F64T(logits), "loss": F64T(loss.reshape(1))}
    for k, g in G.items():
        T["grad." + k] = F64T(g)
    dec.write_safetensors(os.path.join(d, "golden.safetensors"), T,
                          {"generator": GEN, "compute": "float64", "seed": str(seed), "seq_len": str(L),
                           "loss": "mean over t=0..L-2 of CE(logits[t], tokens[t+1])"})
    dec.check_roundtrip(os.path.join(d, "golden.safetensors"), T)
    return [os.path.join(d, f) for f in ("config.json", "model.safetensors", "golden.safetensors")]


def main():
    print("engram TTT gradient reference fixtures ->", OUT)
    os.makedirs(OUT, exist_ok=True)
    files = []
    for (kind, bb), seed in {("linear", "T"): 3001, ("linear", "M"): 3002,
                             ("mlp", "T"): 3003, ("mlp", "M"): 3004}.items():
        files.append(layer_case(kind, bb, seed))
    files += model_case(3005)
    total = 0
    for p in files:
        sz = os.path.getsize(p)
        assert sz < 1024 * 1024, p
        total += sz
        print(f"  {os.path.relpath(p, ROOT):56s} {sz:8d} B")
    print(f"  total {total} B")
    bad = [c for c in CHECKS if not c[3]]
    print(f"self-checks: {len(CHECKS) - len(bad)}/{len(CHECKS)} passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
