#!/usr/bin/env python3
"""lowbit int8 against ONNX Runtime int8 on the real-world models, in many alternating rounds.

usage: python bench/realworld_ab.py WORKDIR [--models u2netp,centerface] [--rounds 15] [--iters 10]
WORKDIR: the directory `bench/realworld_quant.py` left (/tmp/lowbit-rwq-*), holding per model lowbit's W8A8 file
(`lowbit.onnx`) and ONNX Runtime's own quantize_static file (`ort-MinMax.onnx`).

On a shared machine one measurement of each can be off by 20-30% (realworld_quant.py measures each once); this
alternates `lowbit bench` (batch 1, 1 thread) and an ORT session (1 thread, graph optimizations on) for --rounds
rounds (the timing functions are realworld_quant.py's: lowbit with 3 warm-up runs, ORT with 3) and prints each
round's median latencies, the median of the per-round ratios and the ratio of the minima.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realworld_quant import lowbit_latency, ort_latency  # noqa: E402

SHAPES = {"centerface": [1, 3, 480, 640], "u2netp": [1, 3, 320, 320], "sface": [1, 3, 112, 112]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--models", default="u2netp,centerface")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    for m in a.models.split(","):
        shape = SHAPES[m]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        lb, ox = [], []
        for r in range(a.rounds):
            lb.append(lowbit_latency(os.path.join(a.workdir, m, "lowbit.onnx"), shape, a.iters))
            ox.append(ort_latency(os.path.join(a.workdir, m, "ort-MinMax.onnx"), x, a.iters))
            print(f"{m} round {r}: lowbit int8 {lb[-1]:.2f} ms, ORT int8 {ox[-1]:.2f} ms, ratio {ox[-1] / lb[-1]:.2f}")
        ratios = [o_ / l_ for o_, l_ in zip(ox, lb)]
        print(f"{m}: median per-round ratio {np.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), "
              f"ratio of minima {min(ox) / min(lb):.2f} (lowbit {min(lb):.2f} ms, ORT {min(ox):.2f} ms), {a.rounds} rounds")


if __name__ == "__main__":
    main()
