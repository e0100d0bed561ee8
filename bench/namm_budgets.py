#!/usr/bin/env python3
"""Tabulates bench/namm_budgets.sh: one row per policy, one column per cache budget (accuracy with
its 95% Wilson interval, and the cache kept), the full cache as the reference row; writes table.md
and accuracy.svg (accuracy against the budget, one line per policy) into the results directory."""
import csv
import glob
import os
import sys


def main():
    out = sys.argv[1]
    cells = {}
    for path in glob.glob(os.path.join(out, "*_tasks.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                budget = row["budget"]
                cells[(row["policy"], budget)] = row
    if not cells:
        sys.exit(f"no *_tasks.csv in {out}")
    budgets = sorted({b for (p, b) in cells if b != "none"}, key=float)
    policies = sorted({p for (p, b) in cells if p != "none"}, key=lambda p: (p != "namm", p))
    full = cells.get(("none", "none"))
    first = next(iter(cells.values()))
    lines = [f"Task {first['task']} at {first['length']} tokens, {first['samples']} held-out samples per cell; "
             "accuracy [95% Wilson interval], cache kept per KV head when the question is answered.", ""]
    lines.append("| policy | " + " | ".join(f"budget {float(b):.0%}" for b in budgets) + " |")
    lines.append("|---|" + "---|" * len(budgets))
    if full:
        acc = f"{100 * float(full['accuracy']):.1f}% [{100 * float(full['ci_low']):.1f}, {100 * float(full['ci_high']):.1f}]"
        lines.append("| full cache | " + " | ".join(f"{acc} (kept 100%)" for _ in budgets) + " |")
    for p in policies:
        row = [p]
        for b in budgets:
            c = cells.get((p, b))
            row.append("" if c is None else
                       f"{100 * float(c['accuracy']):.1f}% [{100 * float(c['ci_low']):.1f}, {100 * float(c['ci_high']):.1f}] "
                       f"(kept {100 * float(c['cache_kept']):.0f}%)")
        lines.append("| " + " | ".join(row) + " |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    # accuracy.svg: accuracy against the budget, one polyline per policy, the full cache dashed.
    w, h, left, right, top, bottom = 720, 460, 60, 190, 30, 50
    xs = [float(b) for b in budgets]
    x0, x1 = min(xs + [0.0]), 1.0
    sx = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
    sy = lambda y: top + (1 - y / 100.0) * (h - top - bottom)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="18" text-anchor="middle">{first["task"]} accuracy by cache budget ({first["length"]} tokens)</text>']
    for y in range(0, 101, 20):
        svg.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y}%</text>')
    for x in xs + [1.0]:
        svg.append(f'<text x="{sx(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{x:.0%}</text>')
    svg.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">cache budget (fraction of the tokens read)</text>')
    if full:
        y = 100 * float(full["accuracy"])
        svg.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#7f7f7f" stroke-dasharray="6,4"/>')
        svg.append(f'<text x="{w - right + 8}" y="{sy(y) + 4:.1f}" fill="#7f7f7f">full cache</text>')
    for i, p in enumerate(policies):
        pts = [(float(b), 100 * float(cells[(p, b)]["accuracy"])) for b in budgets if (p, b) in cells]
        c = colors[i % len(colors)]
        svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="{3 if p == "namm" else 1.5}" points="'
                   + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts) + '"/>')
        svg.append(f'<text x="{w - right + 8}" y="{top + 30 + 16 * i}" fill="{c}">{p}</text>')
    svg.append("</svg>")
    with open(os.path.join(out, "accuracy.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
