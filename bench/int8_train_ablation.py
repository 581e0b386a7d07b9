#!/usr/bin/env python3
"""Tabulates INT8-training runs against their float run (issue 22 lines 1-2) and draws their curves.

usage: python bench/int8_train_ablation.py RUN.json [RUN.json ...] [--svg OUT.svg]

Each RUN.json is the `--json` report of one `lowbit train ... --reinit --epochs 8 [--int8-train ...]` run
(same model, recipe and seed); the float run (no "int8_train" key) is the reference of the drop column.
Prints a markdown table (setting, test top-1 per epoch, final simulated and exported top-1, drop) and
writes an SVG with the training loss and test top-1 per epoch of every run.
"""
import argparse
import json
import os


def setting(r):
    i = r.get("int8_train")
    if not i:
        return "float"
    clip = "DSGC clip" if i["dsgc"] else "max clip"
    return f"int8, errors {i['grad_bits']} bits, {clip}, {'DCLS' if i['dcls'] else 'no DCLS'}"


def svg(runs, title):
    colors = ["#000000", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
    cw, ch, left, top = 460, 300, 60, 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * cw + 40}" height="{ch + 150}" '
           'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14">{title}</text>']
    for k, (key, name) in enumerate([("loss", "training loss"), ("test_acc", "test top-1 %")]):
        x0 = left + k * (cw + 20)
        pw, ph = cw - 80, ch - 40
        vals = [(h["epoch"], h[key] * (100 if key == "test_acc" else 1)) for _, r in runs for h in r["history"]]
        if key == "test_acc":
            vals = [v for v in vals if v[1] >= 80]
        xmin, xmax = min(v[0] for v in vals), max(v[0] for v in vals)
        ymin, ymax = min(v[1] for v in vals), max(v[1] for v in vals)
        px = lambda x: x0 + (x - xmin) / max(xmax - xmin, 1e-9) * pw  # noqa: E731
        py = lambda y: top + ph - (min(max(y, ymin), ymax) - ymin) / max(ymax - ymin, 1e-9) * ph  # noqa: E731
        out.append(f'<text x="{x0}" y="{top - 8}" font-size="12">{name}</text>')
        out.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{x0 - 4}" y="{top + 8}" text-anchor="end">{ymax:.3g}</text>')
        out.append(f'<text x="{x0 - 4}" y="{top + ph}" text-anchor="end">{ymin:.3g}</text>')
        out.append(f'<text x="{x0}" y="{top + ph + 14}">epoch {xmin}</text>')
        out.append(f'<text x="{x0 + pw}" y="{top + ph + 14}" text-anchor="end">{xmax}</text>')
        for j, (label, r) in enumerate(runs):
            c = colors[j % len(colors)]
            pts = " ".join(f"{px(h['epoch']):.1f},{py(h[key] * (100 if key == 'test_acc' else 1)):.1f}"
                           for h in r["history"])
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
            if k == 0:
                out.append(f'<text x="{left}" y="{top + ph + 34 + 14 * j}" fill="{c}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--svg")
    a = ap.parse_args()
    runs = [(setting(r), r) for r in (json.load(open(p)) for p in a.runs)]
    base = next((r for s, r in runs if s == "float"), None)
    print("| setting | test top-1 per epoch (simulated) | final simulated | exported (float ONNX, lowbit) | drop vs float |")
    print("|---|---|---|---|---|")
    for s, r in runs:
        per = ", ".join(f"{h['test_acc'] * 100:.2f}" for h in r["history"])
        drop = f"{(r['deployed_top1'] - base['deployed_top1']) * 100:+.2f} pp" if base and r is not base else "-"
        print(f"| {s} | {per} | {r['history'][-1]['test_acc'] * 100:.2f} | {r['deployed_top1'] * 100:.2f} | {drop} |")
    if a.svg:
        model = os.path.basename(runs[0][1]["model"])
        tmp = a.svg + ".tmp"
        open(tmp, "w").write(svg(runs, f"{model}: float and INT8 training, 8 epochs from fresh weights"))
        os.replace(tmp, a.svg)


if __name__ == "__main__":
    main()
