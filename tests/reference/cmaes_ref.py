#!/usr/bin/python3
"""Independent NumPy reference for CMA-ES (golden fixture for engram's NAMM trainer).

Regenerate (from the repository root, Debian python3, numpy 1.24):

    /usr/bin/python3 tests/reference/cmaes_ref.py

Algorithm: (mu/mu_w, lambda)-CMA-ES with active (negative) recombination weights and cumulative
step-size adaptation, default parameters of N. Hansen, "The CMA Evolution Strategy: A Tutorial",
arXiv:1604.00772 (2016).  MAXIMISATION: candidates are ranked by fitness, highest first.
All arithmetic float64; inputs (z) are stored as F32 and used after rounding; outputs are rounded to
F32 when stored.

Constants (n = dimension, lambda = population, mu = floor(lambda / 2)):
    w'_i     = ln((lambda + 1) / 2) - ln i,  i = 1..lambda
    mu_eff   = (sum_{i<=mu} w'_i)^2 / sum_{i<=mu} w'_i^2;   mu_eff^- likewise over i > mu
    c_1      = 2 / ((n + 1.3)^2 + mu_eff)                             (alpha_cov = 2)
    c_mu     = min(1 - c_1, 2 (mu_eff - 2 + 1/mu_eff) / ((n + 2)^2 + 2 mu_eff / 2))
               (the 2016 form; later tutorial revisions add 1/4 inside the bracket, which does NOT
               reproduce namm.md's c_mu = 8.37e-7 for n = 4172, so it is not used)
    alpha^-  = min(1 + c_1 / c_mu,  1 + 2 mu_eff^- / (mu_eff + 2),  (1 - c_1 - c_mu) / (n c_mu))
    w_i      = w'_i / sum_{w'_j >= 0} w'_j          if w'_i >= 0
             = alpha^- w'_i / sum_{w'_j < 0} |w'_j|  if w'_i < 0      (sum of negative w = -alpha^-)
    c_sigma  = (mu_eff + 2) / (n + mu_eff + 5)
    d_sigma  = 1 + 2 max(0, sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma
    c_c      = (4 + mu_eff / n) / (n + 4 + 2 mu_eff / n)
    c_m      = 1
    chi_n    = E||N(0, I)|| = sqrt(n) (1 - 1/(4n) + 1/(21 n^2))
For n = 4172, lambda = 32 these reproduce namm.md section 7 (asserted): mu_eff 9.179,
c_sigma 2.670e-3, d_sigma 1.00267, c_c 9.58e-4, c_1 1.15e-7, c_mu 8.37e-7, chi_n 64.587,
w = 0.1977, 0.1488, ..., 0.0022 (16 positive), negative weights summing to -1.137.

One generation g (g = 0, 1, 2, ...; state m, sigma, C, p_sigma, p_c; p_sigma = p_c = 0 initially):
  1. Eigendecomposition, recomputed EVERY generation from the current C (rule used here):
     C_s = (C + C^T) / 2;  C_s = B diag(D^2) B^T with eigenvalues ASCENDING, each eigenvector
     column sign-normalised so that its entry of largest |value| (first such index on ties) is
     positive; D = sqrt(eigenvalues).  For g = 0, C = I and B = I, D = 1 exactly.  C itself is not
     replaced by C_s.  C^{-1/2} = B diag(1/D) B^T (convention-free).  Every generation of the
     fixture has relative eigenvalue gaps > 1e-3 (asserted), so the convention is well defined.
  2. Sampling: y_k = B D z_k, x_k = m + sigma y_k, k = 1..lambda, z_k = stored input "z.g{g}" row k.
  3. Rank by fitness DESCENDING (stable; fitnesses are distinct), giving y_{1:lambda}, ...
  4. <y>_w = sum_{i=1}^{mu} w_i y_{i:lambda} (positive weights only);  m <- m + c_m sigma <y>_w.
  5. p_sigma <- (1 - c_sigma) p_sigma + sqrt(c_sigma (2 - c_sigma) mu_eff) C^{-1/2} <y>_w.
  6. sigma <- sigma exp((c_sigma / d_sigma) (||p_sigma|| / chi_n - 1))      (NEW p_sigma)
  7. h_sigma = 1 if ||p_sigma|| / sqrt(1 - (1 - c_sigma)^(2 (g + 1))) < (1.4 + 2 / (n + 1)) chi_n
     else 0  (NEW p_sigma, g zero-based so the first generation uses exponent 2).
  8. p_c <- (1 - c_c) p_c + h_sigma sqrt(c_c (2 - c_c) mu_eff) <y>_w.
  9. w°_i = w_i if w_i >= 0, else w_i * n / ||C^{-1/2} y_{i:lambda}||^2   (C^{-1/2} of step 1;
     no epsilon);  delta(h_sigma) = (1 - h_sigma) c_c (2 - c_c);
     C <- (1 + c_1 delta(h_sigma) - c_1 - c_mu sum_{j=1}^{lambda} w_j) C
          + c_1 p_c p_c^T                                             (NEW p_c)
          + c_mu sum_{i=1}^{lambda} w°_i y_{i:lambda} y_{i:lambda}^T
     (sum_j w_j uses the raw weights, including the negative ones).
  The fixture's z seed was chosen so that h_sigma = 1 in generations 0-1 and 0 in 2-3 (both branches
  exercised; the h_sigma test ratio is >= 1e-3 away from 1, asserted).
  Steps 6-9 use sigma-independent quantities, so their order does not matter except as stated.
  Note: evojax's cma_jax.py (the style the official evo-memory CMA_ES follows, per namm.md) uses the
  PRE-update p_sigma in steps 6-7 and the PRE-update p_c in the rank-one term; this fixture follows
  Hansen's tutorial (post-update), as the brief asks.

Fixture: tests/fixtures/namm/cmaes.safetensors  (n = 6, lambda = 8, m0 = 0, sigma0 = 0.3, C0 = I,
4 generations; f(x) = -sum_i (x_i - 0.5 (i + 1))^2, i = 0..5, i.e. target 0.5 * [1..6])
  z.g{g}        F32 [8, 6]  input standard-normal draws of generation g (row k = candidate k)
  x.g{g}        F32 [8, 6]  the candidates x_k = m + sigma B D z_k (depends on the B convention)
  fitness.g{g}  F32 [8]     f(x_k) in candidate (unsorted) order
  mean.g{g} [6], sigma.g{g} [1], p_sigma.g{g} [6], p_c.g{g} [6], C.g{g} [6, 6]   state AFTER gen g
  weights [8], mu_eff, c_sigma, d_sigma, c_c, c_1, c_mu, chi_n ([1] each)        constants n=6, lambda=8
  big.weights [32], big.mu_eff, big.c_sigma, ...                                n=4172, lambda=32
  __metadata__: n, lambda, mu, sigma0, generations, eigen rule, h_sigma rule, weight rule.
"""
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep tests/reference free of __pycache__
sys.path.insert(0, HERE)
from namm_ref import f32, r32, read_safetensors, write_safetensors  # noqa: E402

FIXTURE = os.path.normpath(os.path.join(HERE, "..", "fixtures", "namm", "cmaes.safetensors"))

N_DIM = 6
LAM = 8
SIGMA0 = 0.3
GENERATIONS = 4
Z_SEED = 15
TARGET = 0.5 * np.arange(1, N_DIM + 1, dtype=np.float64)


def constants(n, lam):
    mu = lam // 2
    wp = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1, dtype=np.float64))
    mu_eff = wp[:mu].sum() ** 2 / (wp[:mu] ** 2).sum()
    mu_eff_neg = wp[mu:].sum() ** 2 / (wp[mu:] ** 2).sum()
    c_1 = 2.0 / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(1.0 - c_1, 2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((n + 2.0) ** 2 + 2.0 * mu_eff / 2.0))
    alpha_neg = min(1.0 + c_1 / c_mu, 1.0 + 2.0 * mu_eff_neg / (mu_eff + 2.0),
                    (1.0 - c_1 - c_mu) / (n * c_mu))
    pos = wp >= 0
    w = np.where(pos, wp / wp[pos].sum(), alpha_neg * wp / np.abs(wp[~pos]).sum())
    c_sigma = (mu_eff + 2.0) / (n + mu_eff + 5.0)
    d_sigma = 1.0 + 2.0 * max(0.0, math.sqrt((mu_eff - 1.0) / (n + 1.0)) - 1.0) + c_sigma
    c_c = (4.0 + mu_eff / n) / (n + 4.0 + 2.0 * mu_eff / n)
    chi_n = math.sqrt(n) * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n))
    assert pos[:mu].all() and not pos[mu:].any()
    return dict(n=n, lam=lam, mu=mu, weights=w, mu_eff=mu_eff, c_sigma=c_sigma, d_sigma=d_sigma,
                c_c=c_c, c_1=c_1, c_mu=c_mu, chi_n=chi_n, alpha_neg=alpha_neg)


def check_big(k):
    close = lambda a, b, tol: abs(a - b) <= tol
    assert close(k["mu_eff"], 9.179, 5e-4), k["mu_eff"]
    assert close(k["c_sigma"], 2.670e-3, 5e-7), k["c_sigma"]
    assert close(k["d_sigma"], 1.00267, 5e-6), k["d_sigma"]
    assert close(k["c_c"], 9.58e-4, 5e-7), k["c_c"]
    assert close(k["c_1"], 1.15e-7, 5e-10), k["c_1"]
    assert close(k["c_mu"], 8.37e-7, 5e-10), k["c_mu"]
    assert close(k["chi_n"], 64.587, 5e-4), k["chi_n"]
    w = k["weights"]
    assert close(w[0], 0.1977, 5e-5) and close(w[1], 0.1488, 5e-5) and close(w[15], 0.0022, 5e-5), w
    assert close(w[:16].sum(), 1.0, 1e-12)
    assert close(w[16:].sum(), -1.137, 5e-4), w[16:].sum()


def eigen(C, first):
    """B, D with the documented convention (ascending, largest-|entry| positive)."""
    n = C.shape[0]
    if first:
        assert np.array_equal(C, np.eye(n))
        return np.eye(n), np.ones(n), np.inf
    ev, B = np.linalg.eigh((C + C.T) / 2.0)
    for i in range(n):
        j = int(np.argmax(np.abs(B[:, i])))
        if B[j, i] < 0:
            B[:, i] = -B[:, i]
    assert ev.min() > 0
    gap = (np.diff(ev) / ev.max()).min()
    return B, np.sqrt(ev), gap


def fitness(x):
    return -((x - TARGET) ** 2).sum(axis=-1)


def run():
    k = constants(N_DIM, LAM)
    n, lam, mu, w = N_DIM, LAM, k["mu"], k["weights"]
    rng = np.random.default_rng(Z_SEED)
    m = np.zeros(n)
    sigma = SIGMA0
    C = np.eye(n)
    p_s = np.zeros(n)
    p_c = np.zeros(n)
    out, log = {}, []
    for g in range(GENERATIONS):
        z = r32(rng.standard_normal((lam, n)))
        B, D, gap = eigen(C, g == 0)
        assert gap > 1e-3, gap
        assert np.allclose(B @ np.diag(D ** 2) @ B.T, C, atol=1e-12)
        C_ih = B @ np.diag(1.0 / D) @ B.T                    # C^{-1/2}
        y = z @ (B * D).T                                    # rows: y_k = B D z_k
        x = m + sigma * y
        f = fitness(x)
        order = np.argsort(-f, kind="stable")
        fs = np.sort(f)
        assert (np.diff(fs) > 1e-9).all()
        ys = y[order]
        yw = w[:mu] @ ys[:mu]
        m = m + 1.0 * sigma * yw
        p_s = (1 - k["c_sigma"]) * p_s + math.sqrt(k["c_sigma"] * (2 - k["c_sigma"]) * k["mu_eff"]) * (C_ih @ yw)
        norm_ps = np.linalg.norm(p_s)
        sigma = sigma * math.exp((k["c_sigma"] / k["d_sigma"]) * (norm_ps / k["chi_n"] - 1.0))
        h_ratio = (norm_ps / math.sqrt(1 - (1 - k["c_sigma"]) ** (2 * (g + 1)))
                   / ((1.4 + 2.0 / (n + 1)) * k["chi_n"]))
        assert abs(h_ratio - 1.0) > 1e-3, h_ratio          # float32 cannot flip h_sigma
        h_s = 1.0 if h_ratio < 1.0 else 0.0
        p_c = (1 - k["c_c"]) * p_c + h_s * math.sqrt(k["c_c"] * (2 - k["c_c"]) * k["mu_eff"]) * yw
        w_o = w.copy()
        neg = w < 0
        w_o[neg] = w[neg] * n / (np.linalg.norm(ys[neg] @ C_ih.T, axis=1) ** 2)
        delta = (1 - h_s) * k["c_c"] * (2 - k["c_c"])
        C = ((1 + k["c_1"] * delta - k["c_1"] - k["c_mu"] * w.sum()) * C
             + k["c_1"] * np.outer(p_c, p_c)
             + k["c_mu"] * (ys.T * w_o) @ ys)
        assert np.allclose(C, C.T, atol=1e-15)
        out[f"z.g{g}"] = f32(z)
        out[f"x.g{g}"] = f32(x)
        out[f"fitness.g{g}"] = f32(f)
        out[f"mean.g{g}"] = f32(m)
        out[f"sigma.g{g}"] = f32([sigma])
        out[f"p_sigma.g{g}"] = f32(p_s)
        out[f"p_c.g{g}"] = f32(p_c)
        out[f"C.g{g}"] = f32(C)
        log.append((g, h_s, h_ratio, sigma, gap, f.max(), fitness(m), np.linalg.eigvalsh(C)))
    return k, out, log


def main():
    big = constants(4172, 32)
    check_big(big)
    print(f"big constants (n=4172, lambda=32): mu_eff={big['mu_eff']:.4f} c_sigma={big['c_sigma']:.4e} "
          f"d_sigma={big['d_sigma']:.6f} c_c={big['c_c']:.4e} c_1={big['c_1']:.4e} "
          f"c_mu={big['c_mu']:.4e} chi_n={big['chi_n']:.4f} w0..1={big['weights'][:2].round(4)} "
          f"w15={big['weights'][15]:.4f} sum(w-)={big['weights'][16:].sum():.4f}  -> match namm.md")
    k, out, log = run()
    names = ("mu_eff", "c_sigma", "d_sigma", "c_c", "c_1", "c_mu", "chi_n")
    out["weights"] = f32(k["weights"])
    out["big.weights"] = f32(big["weights"])
    for nm in names:
        out[nm] = f32([k[nm]])
        out["big." + nm] = f32([big[nm]])
    print("small constants (n=6, lambda=8): " + " ".join(f"{nm}={k[nm]:.6g}" for nm in names)
          + f" weights={np.round(k['weights'], 5).tolist()}")
    for g, h_s, h_ratio, sigma, gap, fbest, fmean, ev in log:
        print(f"gen {g}: h_sigma={h_s:.0f} (ratio {h_ratio:.3f}) sigma={sigma:.6f} eig_gap(sampling C)={gap:.3g} "
              f"best f={fbest:.4f} f(mean)={fmean:.4f} eig(C)={np.round(ev, 4).tolist()}")
    meta = {
        "format": "engram CMA-ES golden fixture v1 (tests/reference/cmaes_ref.py)",
        "reference": "Hansen 2016, arXiv:1604.00772, default parameters with negative weights",
        "objective": "maximise f(x) = -sum((x - 0.5*[1..6])^2)",
        "n": str(N_DIM), "lambda": str(LAM), "mu": str(k["mu"]), "sigma0": str(SIGMA0),
        "mean0": "zeros", "C0": "identity", "generations": str(GENERATIONS), "c_m": "1",
        "eigen_rule": "every generation: eigh((C+C^T)/2), ascending eigenvalues, each eigenvector "
                      "sign-normalised so its largest-|entry| is positive; g=0: B=I, D=1; "
                      "y = B diag(D) z, x = m + sigma y",
        "ranking": "fitness descending (maximisation), stable",
        "h_sigma_rule": "h=1 iff ||p_sigma_new|| / sqrt(1-(1-c_sigma)^(2(g+1))) < (1.4+2/(n+1)) chi_n, "
                        "g zero-based",
        "sigma_rule": "sigma *= exp(c_sigma/d_sigma * (||p_sigma_new||/chi_n - 1))",
        "c_mu_rule": "min(1-c_1, 2(mu_eff-2+1/mu_eff)/((n+2)^2+mu_eff))",
        "negative_weight_rule": "w'<0 scaled by min(1+c_1/c_mu, 1+2mu_eff^-/(mu_eff+2), "
                                "(1-c_1-c_mu)/(n c_mu)) / sum|w'<0|; in the C update "
                                "w°_i = w_i * n/||C^-1/2 y_i||^2 for w_i<0",
        "C_rule": "C = (1 + c_1 delta(h) - c_1 - c_mu sum(w)) C + c_1 p_c_new p_c_new^T + "
                  "c_mu sum w°_i y_i y_i^T, delta(h) = (1-h) c_c (2-c_c)",
        "z_seed": str(Z_SEED),
    }
    size = write_safetensors(FIXTURE, out, meta)
    back, _ = read_safetensors(FIXTURE)
    assert set(back) == set(out) and all(np.array_equal(back[k_], out[k_]) for k_ in out)
    print(f"wrote {FIXTURE} ({size} bytes)")


if __name__ == "__main__":
    main()
