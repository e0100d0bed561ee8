#!/usr/bin/env python3
"""Tabulates bench/ttt_context_curve.sh's runs: table.md (held-out bits per byte by position, the
whole-context average, parameters, training FLOPs per token, training tokens/s, prefill and decode
cost at the trained context) and curve.svg (bits per byte by position, one line per model).

    python3 bench/ttt_context_curve.py OUT_DIR model [model ...]

Reads OUT_DIR/{model}_bpb.csv, _cost.csv, _train.csv, _train_flops.txt, _params.txt (written by the
script); standard library only."""
import csv
import os
import sys


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_text(path):
    with open(path) as f:
        return f.read().strip()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, models = sys.argv[1], sys.argv[2:]
    rows, curves = [], {}
    for m in models:
        bpb = read_csv(os.path.join(out, f"{m}_bpb.csv"))
        cost = read_csv(os.path.join(out, f"{m}_cost.csv"))[0]
        train = read_csv(os.path.join(out, f"{m}_train.csv"))
        points = [(int(r["position_begin"]), int(r["position_end"]), float(r["bits"]), int(r["count"])) for r in bpb]
        curves[m] = points
        total = sum(p[3] for p in points)
        avg = sum(p[2] * p[3] for p in points) / total
        # Training speed: tokens over wall time of the whole run (the last row's cumulative figures).
        last = train[-1]
        tok_s = float(last["tokens"]) / float(last["elapsed_s"])
        held = [float(r["held_out_bits"]) for r in train if r["held_out_bits"] not in ("nan", "")]
        rows.append({
            "model": m,
            "params": int(read_text(os.path.join(out, f"{m}_params.txt"))),
            "flops": float(read_text(os.path.join(out, f"{m}_train_flops.txt"))),
            "tok_s": tok_s,
            "tokens": int(float(last["tokens"])),
            "held": held[-1] if held else float("nan"),
            "avg": avg,
            "first": points[0][2],
            "last": points[-1][2],
            "prefill_ms": 1e3 * float(cost["prefill_s"]),
            "decode_ms": 1e3 * float(cost["decode_s_per_token"]),
            "state_kib": float(cost["decode_state_bytes"]) / 1024,
        })
    buckets = [(p[0], p[1]) for p in curves[models[0]]]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("| model | parameters | training tokens | training FLOPs/token | training tokens/s | held-out bits/byte (trainer) "
                "| bits/byte over the context | first bucket | last bucket | prefill ms | decode ms/token | state KiB |\n")
        f.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in rows:
            f.write(f"| {r['model']} | {r['params']:,} | {r['tokens']:,} | {r['flops']:.3g} | {r['tok_s']:.0f} | {r['held']:.3f} "
                    f"| {r['avg']:.3f} | {r['first']:.3f} | {r['last']:.3f} | {r['prefill_ms']:.1f} | {r['decode_ms']:.2f} "
                    f"| {r['state_kib']:.0f} |\n")
        f.write("\nHeld-out bits per byte by position (engram-eval --bpb):\n\n| positions | " + " | ".join(models) + " |\n")
        f.write("|---|" + "---:|" * len(models) + "\n")
        for i, (b0, b1) in enumerate(buckets):
            f.write(f"| {b0}-{b1} | " + " | ".join(f"{curves[m][i][2]:.3f}" for m in models) + " |\n")
    # The figure: x = bucket middle, y = bits per byte.
    w, h, left, bottom = 720, 420, 70, 50
    xs = [(b0 + b1) / 2 for b0, b1 in buckets]
    ys = [p[2] for m in models for p in curves[m]]
    y0, y1 = min(ys), max(ys)
    pad = 0.05 * (y1 - y0 or 1)
    y0, y1 = y0 - pad, y1 + pad
    sx = lambda x: left + (x - 0) / (buckets[-1][1]) * (w - left - 20)
    sy = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - bottom - 30)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="18" text-anchor="middle">held-out bits per byte by position (KJV, context {buckets[-1][1]})</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - 20}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="30" x2="{left}" y2="{h - bottom}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">position in the context</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        svg.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    for b0, _ in buckets + [(buckets[-1][1], 0)]:
        svg.append(f'<text x="{sx(b0):.1f}" y="{h - bottom + 16}" text-anchor="middle">{b0}</text>')
    for i, m in enumerate(models):
        c = colors[i % len(colors)]
        pts = " ".join(f"{sx(x):.1f},{sy(p[2]):.1f}" for x, p in zip(xs, curves[m]))
        svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
        svg.append(f'<text x="{w - 160}" y="{40 + 16 * i}" fill="{c}">{m}</text>')
    svg.append("</svg>")
    with open(os.path.join(out, "curve.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")
    print(open(os.path.join(out, "table.md")).read())


if __name__ == "__main__":
    main()
