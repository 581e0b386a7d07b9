#!/usr/bin/env python3
"""INT8 training against float training, one epoch each, in the same run (issue 22 line 3).

usage: python bench/int8_train_speed.py [--model fmnist-resnet] [--images 5000] [--rounds 3]
       [--threads 1,2] [--isa avx512vnni,...] [--no-write]
(from the repository root, after `cargo build --release`; needs Fashion-MNIST in
/usr/share/datasets/fashion-mnist: `apt-get install -y dataset-fashion-mnist`).

For each thread count and integer path (LOWBIT_ISA, default: this CPU's), float and `--int8-train` epochs
alternate for --rounds rounds; each side's figure is the median epoch time, the ratio is float / int8 (above 1:
int8 training is faster). The int8 side's per-phase split (forward, input gradient, weight gradient,
quantization; summed over its int8 convolutions) comes from its JSON report. Written to bench/RESULTS.md
(section "INT8 training speed").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_ort import cpu_model, write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
DATA = "/usr/share/datasets/fashion-mnist"


def epoch(model, images, threads, isa, int8, tmp):
    out = os.path.join(tmp, "m.onnx")
    rep = os.path.join(tmp, "r.json")
    cmd = [LOWBIT, "train", model, "--data", DATA, "--reinit", "--epochs", "1", "--limit", str(images),
           "--test-limit", "200", "--threads", str(threads), "--no-resume", "-o", out, "--json", rep]
    if int8:
        cmd.append("--int8-train")
    env = dict(os.environ)
    if isa:
        env["LOWBIT_ISA"] = isa
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    r = json.load(open(rep))
    split = None
    if int8:
        split = {k: sum(l["seconds"][k] for l in r["int8_train"]["layers"])
                 for k in ("forward", "input_grad", "weight_grad", "quantization")}
        split["path"] = r["int8_train"]["path"]
    return r["history"][0]["seconds"], split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-resnet")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--isa", default="", help="comma-separated LOWBIT_ISA values; empty: this CPU's default")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(LOWBIT):
        sys.exit(f"{LOWBIT} not found: run `cargo build --release` first")
    model = os.path.join(ROOT, "..", "shared", "zoo", a.model + ".onnx")
    tmp = tempfile.mkdtemp(prefix="lowbit-i8speed-")
    rows = []
    for isa in a.isa.split(","):
        for t in [int(x) for x in a.threads.split(",")]:
            fl, i8, splits = [], [], []
            for _ in range(a.rounds):
                fl.append(epoch(model, a.images, t, isa, False, tmp)[0])
                s, sp = epoch(model, a.images, t, isa, True, tmp)
                i8.append(s)
                splits.append(sp)
            f, q = float(np.median(fl)), float(np.median(i8))
            sp = splits[int(np.argsort(i8)[len(i8) // 2])]
            rows.append((isa or "default", sp["path"], t, f, q, f / q, sp))
            print(f"{a.model} LOWBIT_ISA={isa or '(unset)'} ({sp['path']}) threads {t}: float {f:.2f} s, "
                  f"int8 {q:.2f} s, speed-up {f / q:.2f}x; int8 split fwd {sp['forward']:.2f} dX "
                  f"{sp['input_grad']:.2f} dW {sp['weight_grad']:.2f} quant {sp['quantization']:.2f} s", flush=True)
    if a.no_write:
        return
    body = [
        f"CPU: {cpu_model()}; {a.model} from fresh weights, one epoch on the first {a.images:,} Fashion-MNIST "
        f"training images (batch 128, 200 test images), float and `--int8-train` alternating, median of "
        f"{a.rounds} rounds each. The split sums the int8 convolutions' phases over the epoch (their other "
        "layers, BatchNorm, the optimizer and data loading are the rest of the epoch). Reproduce: "
        f"`python bench/int8_train_speed.py --images {a.images} --rounds {a.rounds} --threads {a.threads}"
        + (f" --isa {a.isa}" if a.isa else "") + "`.",
        "",
        "| LOWBIT_ISA | int8 path | threads | float epoch s | int8 epoch s | speed-up | int8 fwd s | dX s | dW s | quant s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for isa, path, t, f, q, r, sp in rows:
        body.append(f"| {isa} | {path} | {t} | {f:.2f} | {q:.2f} | **{r:.2f}x** | {sp['forward']:.2f} | "
                    f"{sp['input_grad']:.2f} | {sp['weight_grad']:.2f} | {sp['quantization']:.2f} |")
    write_section("## INT8 training speed (issue 22 line 3)", "\n".join(body))


if __name__ == "__main__":
    main()
