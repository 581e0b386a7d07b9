#!/usr/bin/env python3
"""Weight error alone: for each QDQ file given, top-1 agreement and logit cosine with the float model
on ../shared/data/photos224, once as written (weights and activations quantized) and once with every
activation QuantizeLinear -> DequantizeLinear pair removed (weights quantized, activations float).
Separates what per-tensor weights cost from what 8-bit activations cost in the DFQ ablation.

usage: python bench/weights_only.py FLOAT.onnx QDQ.onnx [QDQ.onnx ...]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "photos224")


def strip_activation_qdq(path):
    m = onnx.load(path)
    g = m.graph
    inits = {i.name for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    rename, keep = {}, []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            continue
        if n.op_type == "DequantizeLinear":
            p = prod.get(n.input[0])
            if p is not None and p.op_type == "QuantizeLinear" and p.input[0] not in inits:
                rename[n.output[0]] = p.input[0]
                continue
        keep.append(n)

    def r(x):
        while x in rename:
            x = rename[x]
        return x

    for n in keep:
        for i, x in enumerate(n.input):
            n.input[i] = r(x)
    for o in g.output:
        if o.name in rename:
            keep.append(onnx.helper.make_node("Identity", [r(o.name)], [o.name]))
    del g.node[:]
    g.node.extend(keep)
    return m.SerializeToString()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "photos")
        subprocess.run([LOWBIT, "dump-data", PHOTOS, "--preset", "imagenet", "--split", "test", "-o", prefix],
                       check=True, stdout=subprocess.DEVNULL)
        meta = json.load(open(prefix + ".json"))
        x = np.fromfile(prefix + ".f32", dtype="<f4").reshape(meta["shape"])

    def run(model):
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {name: x[i:i + 32]})[0] for i in range(0, len(x), 32)])

    f = run(sys.argv[1])
    print("| file | W and A quantized: agreement | cosine | weights only: agreement | cosine |")
    print("|---|---|---|---|---|")
    for p in sys.argv[2:]:
        cells = []
        for model in (p, strip_activation_qdq(p)):
            q = run(model)
            cos = np.mean([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(f, q)])
            cells += [f"{(q.argmax(1) == f.argmax(1)).mean() * 100:.2f}%", f"{cos:.4f}"]
        print(f"| {os.path.basename(p)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
