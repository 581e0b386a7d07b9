#!/usr/bin/env python3
"""lowbit int8 against ONNX Runtime int8 on the real-world models, in many alternating rounds.

usage: python bench/realworld_ab.py WORKDIR [--models u2netp,centerface] [--rounds 15] [--iters 10]
WORKDIR: the directory `bench/realworld_quant.py` left (/tmp/lowbit-rwq-*), holding per model lowbit's W8A8 file
(`lowbit.onnx`) and ONNX Runtime's own quantize_static file (`ort-MinMax.onnx`).

On a shared machine one measurement of each can be off by 20-30% (realworld_quant.py measures each once); this
alternates `lowbit bench` (batch 1, 1 thread) and an ORT session (1 thread, graph optimizations on) for --rounds
rounds and prints each round's median latencies, the median of the per-round ratios and the ratio of the minima.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
SHAPES = {"centerface": [1, 3, 480, 640], "u2netp": [1, 3, 320, 320], "sface": [1, 3, 112, 112]}


def lowbit_ms(path, shape, iters):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([LOWBIT, "bench", path, "--input-shape", ",".join(map(str, shape)), "--threads", "1",
                        "--iters", str(iters), "--warmup", "2", "--json", f.name], check=True, capture_output=True)
        return float(json.load(open(f.name))["median_ms"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--models", default="u2netp,centerface")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    for m in a.models.split(","):
        shape = SHAPES[m]
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
        s = ort.InferenceSession(os.path.join(a.workdir, m, "ort-MinMax.onnx"), o, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        name = s.get_inputs()[0].name

        def ort_ms():
            for _ in range(2):
                s.run(None, {name: x})
            ts = []
            for _ in range(a.iters):
                t = time.perf_counter()
                s.run(None, {name: x})
                ts.append((time.perf_counter() - t) * 1e3)
            return float(np.median(ts))

        lb, ox = [], []
        for r in range(a.rounds):
            lb.append(lowbit_ms(os.path.join(a.workdir, m, "lowbit.onnx"), shape, a.iters))
            ox.append(ort_ms())
            print(f"{m} round {r}: lowbit int8 {lb[-1]:.2f} ms, ORT int8 {ox[-1]:.2f} ms, ratio {ox[-1] / lb[-1]:.2f}")
        ratios = [o_ / l_ for o_, l_ in zip(ox, lb)]
        print(f"{m}: median per-round ratio {np.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), "
              f"ratio of minima {min(ox) / min(lb):.2f} (lowbit {min(lb):.2f} ms, ORT {min(ox):.2f} ms), {a.rounds} rounds")


if __name__ == "__main__":
    main()
