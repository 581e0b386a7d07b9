#!/usr/bin/env python3
"""DMS width search against uniform widths on binary fmnist-resnet (issue 24).

usage: python bench/dms_widths.py [--limit 30000] [--epochs 4] [--search-epochs 2]
           [--budgets 1x,0.25x] [--uniform 0.5,1,1.5,2] [--candidates ...] [--jobs 2] [--dir /tmp/dms]

1. `lowbit search-widths --budget-ops B` for every budget (binary multiply-accumulates, as a multiple
   of the model's own widths).
2. `lowbit train --binary irnet --widths W` for every uniform multiplier and every searched width file:
   the same recipe for all (from scratch, the first --limit training images, --epochs, Adam 0.001
   cosine, batch 128, seed 0), --jobs runs side by side with one thread each.
3. Latency of every exported QDQ file on lowbit's binary kernels (`lowbit bench`, 1 thread, batch 1,
   alternating rounds, median of the rounds' medians) on an otherwise idle machine.
4. Writes the table to bench/RESULTS.md ("DMS width search (issue 24)") and bench/dms_widths.svg
   (deployed top-1 against binary MACs and against parameters, the uniform points joined).
Every step skips work whose output already exists in --dir (rerun to resume).
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_ort import cpu_model, write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
MODEL = os.path.join(ROOT, "..", "shared", "zoo", "fmnist-resnet.onnx")
DATA = "/usr/share/datasets/fashion-mnist"


def run_jobs(cmds, jobs):
    """Runs (cmd, log) pairs, `jobs` at a time; fails loudly on a non-zero exit."""
    pending, running = list(cmds), []
    while pending or running:
        while pending and len(running) < jobs:
            cmd, log = pending.pop(0)
            print("+", " ".join(cmd), flush=True)
            running.append((subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT), log))
        time.sleep(2)
        for p, log in list(running):
            if p.poll() is not None:
                running.remove((p, log))
                if p.returncode != 0:
                    sys.exit(f"failed ({p.returncode}), see {log}")


def bench_ms(path, iters):
    out = path + ".bench.json"
    subprocess.run([LOWBIT, "bench", path, "--threads", "1", "--iters", str(iters), "--json", out, "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))


def svg(points, title):
    """Two panels: deployed top-1 against binary MMACs and against parameters (K)."""
    cw, ch, left, top = 430, 300, 60, 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * cw + 40}" height="{ch + 110}" '
           'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14">{title}</text>']
    for k, (key, name) in enumerate([("macs", "binary MMACs per image"), ("params", "parameters (K)")]):
        x0 = left + k * (cw + 20)
        pw, ph = cw - 80, ch - 40
        xs = [p[key] for p in points]
        ys = [p["top1"] for p in points]
        xmin, xmax = min(xs) * 0.9, max(xs) * 1.05
        ymin, ymax = min(ys) - 0.5, max(ys) + 0.5
        px = lambda x: x0 + (x - xmin) / (xmax - xmin) * pw  # noqa: E731
        py = lambda y: top + ph - (y - ymin) / (ymax - ymin) * ph  # noqa: E731
        out.append(f'<text x="{x0}" y="{top - 8}" font-size="12">deployed top-1 % vs {name}</text>')
        out.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for t in range(5):
            yv = ymin + (ymax - ymin) * t / 4
            xv = xmin + (xmax - xmin) * t / 4
            out.append(f'<text x="{x0 - 40}" y="{py(yv) + 4:.1f}">{yv:.1f}</text>')
            out.append(f'<text x="{px(xv) - 12:.1f}" y="{top + ph + 15}">{xv:.1f}</text>')
        uni = sorted([p for p in points if p["kind"] == "uniform"], key=lambda p: p[key])
        out.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="'
                   + " ".join(f"{px(p[key]):.1f},{py(p['top1']):.1f}" for p in uni) + '"/>')
        for p in points:
            c = "#1f77b4" if p["kind"] == "uniform" else "#d62728"
            out.append(f'<circle cx="{px(p[key]):.1f}" cy="{py(p["top1"]):.1f}" r="4" fill="{c}"/>')
            out.append(f'<text x="{px(p[key]) + 6:.1f}" y="{py(p["top1"]) - 6:.1f}" fill="{c}">{p["label"]}</text>')
    out.append(f'<text x="{left}" y="{ch + 80}">blue: uniform width multipliers (joined); red: DMS-searched widths '
               'at a binary-MAC budget</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--search-epochs", type=int, default=2)
    ap.add_argument("--budgets", default="1x,0.25x")
    ap.add_argument("--uniform", default="0.5,1,1.5,2")
    ap.add_argument("--candidates", default="1x=0.5,0.625,0.75,0.875,1,1.125,1.25,1.375,1.5,1.625,1.75,1.875,2;"
                    "0.25x=0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25",
                    help="per budget: BUDGET=m,m,...;BUDGET=...")
    ap.add_argument("--penalty", default="20")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/dms")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    d = lambda name: os.path.join(a.dir, name)  # noqa: E731
    recipe = ["--data", DATA, "--binary", "irnet", "--limit", str(a.limit), "--threads", "1"]
    cands = dict(kv.split("=", 1) for kv in a.candidates.split(";"))
    # 1. Searches.
    searches = []
    for b in a.budgets.split(","):
        w = d(f"widths-{b}.json")
        if not os.path.exists(w):
            searches.append(([LOWBIT, "search-widths", MODEL, *recipe, "--budget-ops", b, "--candidates",
                              cands[b], "--penalty", a.penalty, "--epochs", str(a.search_epochs), "--test-limit", "1000", "-o", w],
                             d(f"search-{b}.log")))
    # 2. Uniform trainings can start beside the searches; searched ones after.
    def train_cmd(tag, widths):
        out = d(f"train-{tag}.onnx")
        return ([LOWBIT, "train", MODEL, *recipe, "--widths", widths, "--epochs", str(a.epochs), "-o", out,
                 "--json", d(f"train-{tag}.json"), "--no-resume"], d(f"train-{tag}.log"))
    uniform = [train_cmd(f"u{m}", m) for m in a.uniform.split(",") if not os.path.exists(d(f"train-u{m}.json"))]
    run_jobs(searches + uniform, a.jobs)
    searched = [train_cmd(f"s{b}", d(f"widths-{b}.json")) for b in a.budgets.split(",")
                if not os.path.exists(d(f"train-s{b}.json"))]
    run_jobs(searched, a.jobs)
    # 3. Latency, alternating rounds.
    tags = [f"u{m}" for m in a.uniform.split(",")] + [f"s{b}" for b in a.budgets.split(",")]
    ms = {t: [] for t in tags}
    paths = {}
    for _ in range(a.rounds):
        for t in tags:
            r = bench_ms(d(f"train-{t}.onnx"), a.iters)
            ms[t].append(r["median_ms"])
            paths[t] = r.get("paths", {})
    # 4. Table and plot.
    rows, points = [], []
    for t in tags:
        r = json.load(open(d(f"train-{t}.json")))
        kind = "uniform" if t.startswith("u") else "searched"
        widths = "/".join(str(e["width"]) for e in r["widths"])
        label = f"{t[1:]}x" if kind == "uniform" else f"DMS @ {t[1:]} ops"
        top1 = r["deployed_top1"] * 100
        sim = r["history"][-1]["test_acc"] * 100
        lat = sorted(ms[t])[len(ms[t]) // 2]
        points.append({"kind": kind, "label": label, "top1": top1, "macs": r["binary_macs"] / 1e6,
                       "params": r["params"] / 1e3})
        rows.append(f"| {label} | {widths} | {r['binary_macs'] / 1e6:.2f} | {r['binary_weights'] / 1e3:.1f} | "
                    f"{r['params'] / 1e3:.1f} | {sim:.2f} | **{top1:.2f}** | {lat:.3f} |")
    svg_path = os.path.join(ROOT, "bench", "dms_widths.svg")
    open(svg_path, "w").write(svg(points, "fmnist-resnet binary (IR-Net): uniform widths vs DMS-searched widths"))
    binpath = paths[tags[0]].get("binary", "?") if isinstance(paths[tags[0]], dict) else "?"
    searched_info = []
    for b in a.budgets.split(","):
        w = json.load(open(d(f"widths-{b}.json")))
        searched_info.append(f"budget {b} ({w['budget']['value'] / 1e6:.2f} M binary MACs): widths "
                             + ", ".join(f"{e['layers'][0]} group {e['base']} -> {e['width']} (location "
                                         f"{e['location']:.2f})" for e in w["widths"])
                             + f"; cost {w['cost'] / w['budget']['value']:.3f}x budget, search {w['train_seconds']:.0f} s")
    body = (
        f"CPU: {cpu_model()}; binary kernel path `{binpath}`, LOWBIT_ISA={os.environ.get('LOWBIT_ISA', 'unset')}. "
        f"fmnist-resnet rewritten Bi-Real style (18 binary 3x3 convolutions; stem, projections and classifier "
        f"8-bit at export), IR-Net (Libra-PB + EDE), trained from scratch with one recipe for every row: the first "
        f"{a.limit} Fashion-MNIST training images, {a.epochs} epochs, Adam 0.001 cosine, batch 128, seed 0; "
        f"deployed = the exported QDQ file on lowbit's binary/integer runtime, 10k test images. Widths are the "
        f"stage widths (stem + stage 1 / stage 2 / stage 3). Searches: `search-widths --budget-ops B --candidates "
        f"C --penalty {a.penalty} --epochs {a.search_epochs} --limit {a.limit}` from the float weights. Latency: `lowbit "
        f"bench`, 1 thread, batch 1, median of {a.rounds} alternating rounds of {a.iters} runs.\n\n"
        "| network | widths | binary MMACs | binary weights (K) | parameters (K) | simulated top-1 | deployed top-1 "
        "| latency ms |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + "\n".join(f"- {s}" for s in searched_info) + "\n\n"
        f"Plot: bench/dms_widths.svg. Reproduce: `python bench/dms_widths.py --limit {a.limit} --epochs {a.epochs} "
        f"--search-epochs {a.search_epochs} --budgets {a.budgets} --uniform {a.uniform}` (candidates C per budget: "
        f"{a.candidates}).\n")
    print(body)
    write_section("## DMS width search (issue 24)", body)


if __name__ == "__main__":
    main()
