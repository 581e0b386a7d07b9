#!/usr/bin/env python3
"""Same-run A/B of two lowbit binaries: speed of `lowbit bench` and the bytes `lowbit quantize` writes.

usage: python bench/ab_binaries.py BASE_BINARY [NEW_BINARY] [--rounds R] [--iters N] [--models a,b]
(from the repository root, with ./venv from scripts/test.sh; NEW_BINARY defaults to
target/release/lowbit). Build the base binary from the commit to compare with, e.g.
`git worktree add /tmp/base REV && cargo build --release --manifest-path /tmp/base/Cargo.toml`.

For each model, in alternating rounds on this CPU's default paths: the float file and ONNX Runtime's
own QDQ file (quantize_static, written by bench/ort_qdq.py), batch 1, 1 and 2 threads, and ONNX
Runtime int8 in the same rounds as the peer. Then `lowbit quantize` (W8A8 auto and W4A8 mse) with
both binaries on the same calibration images: the QDQ files must be byte-identical when only code
structure changed. Written to bench/RESULTS.md (section "A/B of two builds").
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_ort import cpu_model, replace_section  # noqa: E402
from int8_vs_ort import ort_median  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "..", "shared", "zoo")


def bench(binary, path, threads, iters):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([binary, "bench", path, "--threads", str(threads), "--iters", str(iters), "--warmup", "5",
                        "--json", f.name], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.load(open(f.name))


def quantize_hash(binary, model, calib, args, out):
    subprocess.run([binary, "quantize", model, "--calib", calib, "--calib-n", "200", "-o", out] + args, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return hashlib.sha256(open(out, "rb").read()).hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new", nargs="?", default=os.path.join(ROOT, "target", "release", "lowbit"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--models", default="resnet18-random,mobilenetv2-imagenet,efficientnet-lite0-imagenet")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lowbit-ab-")
    models = a.models.split(",")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ort_qdq.py"), tmp, "--models", ",".join(models)],
                   check=True, stdout=subprocess.DEVNULL)
    rows = []
    for m in models:
        files = {"f32": os.path.join(ZOO, m + ".onnx"), "int8": os.path.join(tmp, m + "-ort-qdq.onnx")}
        for threads in (1, 2):
            res = {}
            paths = None
            for _ in range(a.rounds):
                res.setdefault("ort int8", []).append(ort_median(files["int8"], threads, 1, a.iters))
                for kind, f in files.items():
                    for tag, b in (("base", a.base), ("new", a.new)):
                        j = bench(b, f, threads, a.iters)
                        res.setdefault((kind, tag), []).append(j["median_ms"])
                        if tag == "new" and kind == "int8":
                            paths = j.get("paths")
            med = {k: float(np.median(v)) for k, v in res.items()}
            rows.append((m, threads, med, paths))
            print(f"{m:28} T{threads}: f32 base {med[('f32', 'base')]:.2f} new {med[('f32', 'new')]:.2f}  "
                  f"int8 base {med[('int8', 'base')]:.2f} new {med[('int8', 'new')]:.2f}  ORT int8 {med['ort int8']:.2f} ms",
                  flush=True)
    calib = "/usr/share/datasets/fashion-mnist"
    hashes = []
    for m, args in (("fmnist-mobilenet", ["--weights", "8"]), ("fmnist-resnet", ["--weights", "4", "--method", "mse"])):
        hb = quantize_hash(a.base, os.path.join(ZOO, m + ".onnx"), calib, args, os.path.join(tmp, "a.onnx"))
        hn = quantize_hash(a.new, os.path.join(ZOO, m + ".onnx"), calib, args, os.path.join(tmp, "b.onnx"))
        hashes.append((m, " ".join(args), hb, hn))
        print(f"quantize {m} {' '.join(args)}: base {hb} new {hn} {'identical' if hb == hn else 'DIFFERENT'}")
    feats = subprocess.run([a.new, "inspect", os.path.join(ZOO, "mnist-cnn.onnx")], capture_output=True, text=True).stdout
    cpu_line = next((ln.split(None, 1)[1] for ln in feats.splitlines() if ln.startswith("cpu")), "?")
    body = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores; features: {cpu_line}).",
            f"Base: `{a.base}`; new: `{a.new}`. Batch 1, median of {a.rounds} alternating rounds of {a.iters} runs, each",
            "build on this CPU's default paths (the new build's paths named in the table); ONNX Runtime int8 on the same",
            "QDQ file in the same rounds. Reproduce: `python bench/ab_binaries.py BASE_BINARY`.", "",
            "| model | threads | paths (new) | f32 base ms | f32 new ms | new/base | int8 base ms | int8 new ms | new/base "
            "| ORT int8 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m, t, med, p in rows:
        ps = f"f32 {p['f32']}, int8 {p['int8']}" if p else "-"
        fb, fn, ib, inn = med[("f32", "base")], med[("f32", "new")], med[("int8", "base")], med[("int8", "new")]
        body.append(f"| {m} | {t} | {ps} | {fb:.2f} | {fn:.2f} | {fn / fb:.3f} | {ib:.2f} | {inn:.2f} | {inn / ib:.3f} "
                    f"| {med['ort int8']:.2f} |")
    body += ["", "`lowbit quantize` (calibration: 200 Fashion-MNIST training images), SHA-256 prefix of",
             "the QDQ file each build writes:", "", "| model | arguments | base | new | same bytes |", "|---|---|---|---|---|"]
    for m, args, hb, hn in hashes:
        body.append(f"| {m} | {args} | {hb} | {hn} | {'yes' if hb == hn else 'NO'} |")
    out = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(out).read() if os.path.exists(out) else ""
    text = replace_section(text, "## A/B of two builds", "\n".join(body))
    open(out + ".tmp", "w").write(text)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
