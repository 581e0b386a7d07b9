#!/usr/bin/env python3
"""RCM against the plain margin loss in low-bit QAT of an embedding model (issue 23, lines 2-3).

usage: python bench/rcm.py FLOAT_EMBED.onnx [--bits 4,3] [--seeds 0,1,2] [--epochs 1] [--limit 6000] [--lr 5e-4] [--rcm-weight 1] [--losses arcface,rcm]
                           [--out bench/rcm.json] [--svg bench/rcm_decomposition.svg] [--report-only]

FLOAT_EMBED.onnx is a float embedding model trained on the open-set protocol, e.g.
  lowbit train ../shared/zoo/fmnist-resnet.onnx --data /usr/share/datasets/fashion-mnist \\
      --extra-data ../shared/data/mnist10k --task embed --loss cosface --reinit --epochs 6 -o float.onnx
For every width W and seed, two QAT runs (LSQ, W{W}A{W}, first and last layers 8-bit) from it with
the same recipe: `--loss arcface` (the baseline) and `--loss rcm` (ArcFace plus the rotation
consistent margin). Each exported QDQ model is scored by lowbit's integer runtime on the 8 unseen
identities (every pair): TAR at FAR 1e-3 and 1e-2, rank-1, and the class / individual error
decomposition against the float model. Prints a markdown table (mean and spread over seeds) and
draws class error against individual error per model (SVG).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.environ.get("LOWBIT_BIN", os.path.join(ROOT, "target", "release", "lowbit"))
FMNIST = "/usr/share/datasets/fashion-mnist"
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist10k")


def tar(report, far):
    return next((t["tar"] for t in report["tar"] if abs(t["far"] - far) < 1e-12), float("nan"))


def one(float_model, bits, seed, loss, args, work):
    out = os.path.join(work, f"w{bits}-{loss}-s{seed}.onnx")
    js = out + ".json"
    cmd = [LOWBIT, "train", float_model, "--data", FMNIST, "--extra-data", MNIST, "--task", "embed",
           "--loss", loss, "--rcm-weight", str(args.rcm_weight), "--qat", "lsq", "--weights", str(bits), "--acts", str(bits),
           "--first-last-bits", "8", "--epochs", str(args.epochs), "--lr", str(args.lr), "--limit", str(args.limit),
           "--test-limit", "1000", "--seed", str(seed), "--no-resume", "-o", out, "--json", js]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    r = json.load(open(js))
    o = r["open_set"]
    d = o["decomposition"]
    return {"bits": bits, "seed": seed, "loss": loss, "tar_1e-3": tar(o["model"], 1e-3), "tar_1e-2": tar(o["model"], 1e-2),
            "rank1": o["model"]["rank1"], "class_deg": d["class_deg"], "individual_deg": d["individual_deg"],
            "total_deg": d["total_deg"], "compactness_change_deg": d["compactness_change_deg"],
            "cosine": o["cosine"]["mean"], "agreement": o.get("agreement", {}).get("agreement"),
            "float_tar_1e-3": tar(o["reference"], 1e-3), "float_tar_1e-2": tar(o["reference"], 1e-2),
            "float_rank1": o["reference"]["rank1"], "train_seconds": r["train_seconds"]}


def svg(rows, path):
    w, h, pad = 520, 360, 50
    xs = [r["class_deg"] for r in rows]
    ys = [r["individual_deg"] for r in rows]
    xmax, ymax = max(xs) * 1.15, max(ys) * 1.15
    px = lambda x: pad + x / xmax * (w - 2 * pad)
    py = lambda y: h - pad - y / ymax * (h - 2 * pad)
    colors = {("arcface", 4): "#1b9e77", ("rcm", 4): "#d95f02", ("arcface", 3): "#7570b3", ("rcm", 3): "#e7298a"}
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w/2}" y="18" text-anchor="middle">Embedding error of QAT models vs float: class rotation against individual deviation</text>',
         f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
         f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
         f'<text x="{w/2}" y="{h-12}" text-anchor="middle">class error (centre rotation, degrees)</text>',
         f'<text x="14" y="{h/2}" transform="rotate(-90 14 {h/2})" text-anchor="middle">individual error (degrees)</text>']
    for k in range(5):
        x, y = xmax * k / 4, ymax * k / 4
        s.append(f'<text x="{px(x)}" y="{h-pad+14}" text-anchor="middle">{x:.2f}</text>')
        s.append(f'<text x="{pad-4}" y="{py(y)+4}" text-anchor="end">{y:.1f}</text>')
    for r in rows:
        c = colors.get((r["loss"], r["bits"]), "black")
        s.append(f'<circle cx="{px(r["class_deg"]):.1f}" cy="{py(r["individual_deg"]):.1f}" r="4" fill="{c}"/>')
    for i, ((loss, bits), c) in enumerate(colors.items()):
        s.append(f'<circle cx="{w-pad-90}" cy="{h-pad-60+14*i}" r="4" fill="{c}"/>')
        s.append(f'<text x="{w-pad-80}" y="{h-pad-60+14*i+4}">W{bits}A{bits} {"RCM" if loss == "rcm" else "ArcFace"}</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("float_model", nargs="?", default="")
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rcm-weight", type=float, default=1.0, help="RCM's lambda")
    ap.add_argument("--losses", default="arcface,rcm")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "rcm.json"))
    ap.add_argument("--svg", default=os.path.join(ROOT, "bench", "rcm_decomposition.svg"))
    ap.add_argument("--report-only", action="store_true", help="print the table and draw the plot of --out again")
    args = ap.parse_args()
    if args.report_only:
        rows = json.load(open(args.out))["runs"]
    else:
        work = tempfile.mkdtemp(prefix="lowbit-rcm-")
        rows = []
        for bits in [int(b) for b in args.bits.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for loss in args.losses.split(","):
                    rows.append(one(args.float_model, bits, seed, loss, args, work))
                    json.dump({"float_model": args.float_model, "epochs": args.epochs, "limit": args.limit, "lr": args.lr,
                               "rcm_weight": args.rcm_weight, "runs": rows}, open(args.out, "w"), indent=1)
    svg(rows, args.svg)
    keys = ["tar_1e-3", "tar_1e-2", "rank1", "class_deg", "individual_deg", "compactness_change_deg", "cosine"]
    print(f"\nfloat: TAR@1e-3 {rows[0]['float_tar_1e-3']*100:.2f}%, TAR@1e-2 {rows[0]['float_tar_1e-2']*100:.2f}%, "
          f"rank-1 {rows[0]['float_rank1']*100:.2f}%\n")
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for bits in sorted({r["bits"] for r in rows}, reverse=True):
        for loss in ["arcface", "rcm"]:
            sel = [r for r in rows if r["bits"] == bits and r["loss"] == loss]
            if not sel:
                continue
            cells = []
            for k in keys:
                v = [r[k] * (100 if k in ("tar_1e-3", "tar_1e-2", "rank1") else 1) for r in sel]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):.2f} ± {sd:.2f}")
            print(f"| W{bits}A{bits} {loss} ({len(sel)} seeds) | " + " | ".join(cells) + " |")
    # The paper's observation: the individual error, not the class error, is what costs accuracy.
    # Across the runs: correlation of the rank-1 / TAR loss against the float model with each error.
    def corr(a, b):
        ma, mb = statistics.mean(a), statistics.mean(b)
        sa = sum((x - ma) ** 2 for x in a) ** 0.5
        sb = sum((y - mb) ** 2 for y in b) ** 0.5
        return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb) if sa > 0 and sb > 0 else float("nan")
    if len(rows) > 2:
        for metric in ["rank1", "tar_1e-2", "tar_1e-3"]:
            loss = [r["float_" + metric] - r[metric] for r in rows]
            print(f"correlation of the {metric} loss with: class error {corr(loss, [r['class_deg'] for r in rows]):+.2f}, "
                  f"individual error {corr(loss, [r['individual_deg'] for r in rows]):+.2f} ({len(rows)} runs)")
    print(f"\nwrote {args.out} and {args.svg}")


if __name__ == "__main__":
    sys.exit(main())
