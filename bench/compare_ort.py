#!/usr/bin/env python3
"""lowbit float32 vs ONNX Runtime float32, batch 1, same thread count, in one run.

usage: bench/compare_ort.py [--iters N] [--rounds R] [--min-ms MS]   (from the repository root, after
`cargo build --release`; needs ./venv with onnxruntime, as scripts/test.sh creates; LOWBIT_BIN=PATH
measures another build instead of target/release/lowbit)

Both engines are measured in alternating rounds on the same machine in the same run (the machines
are shared and noisy); each round reports a median latency, and the table shows the median over
rounds. The table is written to bench/RESULTS.md (section "float32 vs ONNX Runtime").
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "..", "shared", "zoo")
# LOWBIT_BIN: another build of lowbit to measure (an A/B of two commits).
LOWBIT = os.environ.get("LOWBIT_BIN") or os.path.join(ROOT, "target", "release", "lowbit")
# Every classifier in the zoo (issue 20, line 4), with the batch-1 input shape each is run at.
SHAPES = {
    "resnet18-random.onnx": (1, 3, 224, 224),
    "mobilenetv2-imagenet.onnx": (1, 3, 224, 224),
    "efficientnet-lite0-imagenet.onnx": (1, 3, 224, 224),
    "ppocr-textline-cls.onnx": (1, 3, 48, 192),
    "mnist-cnn.onnx": (1, 1, 28, 28),
    "fmnist-resnet.onnx": (1, 1, 28, 28),
    "fmnist-mobilenet.onnx": (1, 1, 28, 28),
}
MODELS = list(SHAPES)


def ort_median(path, threads, iters, warmup=10):
    warmup = max(warmup, iters // 4)
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x = np.random.default_rng(0).random(SHAPES[os.path.basename(path)], dtype=np.float32)
    for _ in range(warmup):
        s.run(None, {name: x})
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        s.run(None, {name: x})
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def lowbit_median(path, threads, iters):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        shape = ",".join(map(str, SHAPES[os.path.basename(path)]))
        subprocess.run([LOWBIT, "bench", path, "--input-shape", shape, "--threads", str(threads), "--iters", str(iters),
                        "--warmup", str(max(10, iters // 4)), "--json", f.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.load(open(f.name))["median_ms"]


def f32_path():
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([LOWBIT, "bench", os.path.join(ZOO, "mnist-cnn.onnx"), "--iters", "1", "--json", f.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.load(open(f.name))["paths"]["f32"]


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def replace_section(text, title, body):
    start = text.find(title)
    block = title + "\n\n" + body + "\n"
    if start < 0:
        return (text.rstrip() + "\n\n" if text.strip() else "# lowbit benchmark results\n\n") + block
    # The section's own table ends at the next heading: a later section, or the dated subsections that earlier
    # sessions added under it (kept).
    ends = [e for e in (text.find("\n## ", start + len(title)), text.find("\n### ", start + len(title))) if e >= 0]
    end = min(ends) if ends else -1
    # A blank line before the next section.
    return text[:start] + block + ("\n" + text[end + 1:] if end >= 0 else "")


def write_section(title, body):
    """Replaces (or appends) section `title` of bench/RESULTS.md with `body`, through a temporary file."""
    out = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(out).read() if os.path.exists(out) else ""
    text = replace_section(text, title, body)
    tmp = out + ".tmp"
    open(tmp, "w").write(text)
    os.replace(tmp, out)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    # Sub-millisecond models: 40 runs are a few milliseconds of work, and lowbit starts a fresh process per round;
    # each round gets at least this much work (the same run count for both engines).
    ap.add_argument("--min-ms", type=float, default=200.0)
    a = ap.parse_args()
    if not os.path.exists(LOWBIT):
        sys.exit(f"{LOWBIT} not found: run `cargo build --release` first")
    rows = []
    for m in MODELS:
        path = os.path.join(ZOO, m)
        iters = max(a.iters, int(np.ceil(a.min_ms / ort_median(path, 1, 10))))
        for t in (1, 2):
            lo, oo = [], []
            for _ in range(a.rounds):
                oo.append(ort_median(path, t, iters))
                lo.append(lowbit_median(path, t, iters))
            l, o = float(np.median(lo)), float(np.median(oo))
            rows.append((m, t, l, o, l / o))
            print(f"{m:32} threads {t}: lowbit {l:7.2f} ms  ORT {o:7.2f} ms  ratio {l / o:.2f}", flush=True)
    feats = subprocess.run([LOWBIT, "inspect", os.path.join(ZOO, "mnist-cnn.onnx")], capture_output=True, text=True).stdout
    cpu_line = next((ln.split(None, 1)[1] for ln in feats.splitlines() if ln.startswith("cpu")), "?")
    body = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores; features: {cpu_line}),",
            f"ONNX Runtime {ort.__version__} CPU EP with graph optimizations ALL. Batch 1, median latency per round,",
            f"median over {a.rounds} alternating rounds of at least {a.iters} runs and {a.min_ms:.0f} ms (after a quarter as",
            "many warm-up runs). Reproduce: `python bench/compare_ort.py`",
            "(with ./venv from scripts/test.sh). Ratio = lowbit / ORT (lower is better; issue 20 asks <= 1.15 at 1 thread).",
            f"lowbit's f32 path: {f32_path()}.", "",
            "| model | threads | lowbit fp32 ms | ORT fp32 ms | ratio |", "|---|---|---|---|---|"]
    for m, t, l, o, r in rows:
        body.append(f"| {m} | {t} | {l:.2f} | {o:.2f} | {r:.2f} |")
    print(f"wrote {write_section('## float32 vs ONNX Runtime', chr(10).join(body))}")


if __name__ == "__main__":
    main()
