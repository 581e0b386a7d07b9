#!/usr/bin/env python3
"""The smallest int8 weight memory a per-channel plan can hold, as a share of the f32 plan's.

usage: python bench/weight_floor.py (from the repository root, with ./venv from scripts/test.sh)

Per convolution or Gemm with W weights and C output channels, after BatchNorm folding:
  f32 plan:  4 W bytes of weights + 4 C bytes of bias;
  int8 plan: 1 W byte per weight + 4 C bytes of per-channel scale (f32) + 4 C bytes of bias (int32),
             which per-channel QDQ files (quantize_static's, lowbit's) carry and the integer epilogue
             needs to reproduce the QDQ arithmetic exactly.
So the share is at least (W + 8 C) / (4 W + 4 C), nothing padded or packed. Issue 4 asks for at most
26%, which needs W / C >= 174: models with many cheap (depthwise) channels cannot get there. Even
per-tensor weights (one scale per layer, still an int32 bias per channel) leave (W + 4 C) / (4 W + 4 C).
"""
import glob
import os

import onnx
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "..", "shared", "zoo")


def counts(path):
    m = onnx.load(path)
    init = {i.name: i for i in m.graph.initializer}
    # Some exporters (ppocr-textline-cls) hold weights in Constant nodes.
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    init[n.output[0]] = a.t
    w_total = c_total = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in init:
            continue
        w = numpy_helper.to_array(init[n.input[1]])
        if n.op_type == "Conv":
            c = w.shape[0]
        else:
            trans_b = any(a.name == "transB" and a.i == 1 for a in n.attribute)
            c = w.shape[0] if trans_b else w.shape[1]
        w_total += w.size
        c_total += c
    return w_total, c_total


def main():
    print(f"{'model':<30} {'weights W':>10} {'channels C':>10} {'W/C':>7} {'floor':>7} {'per-tensor':>11}")
    for path in sorted(glob.glob(os.path.join(ZOO, "*.onnx"))):
        w, c = counts(path)
        if w == 0:
            continue
        floor = (w + 8 * c) / (4 * w + 4 * c)
        per_tensor = (w + 4 * c) / (4 * w + 4 * c)
        name = os.path.splitext(os.path.basename(path))[0]
        print(f"{name:<30} {w:>10} {c:>10} {w / c:>7.1f} {100 * floor:>6.1f}% {100 * per_tensor:>10.1f}%")


if __name__ == "__main__":
    main()
