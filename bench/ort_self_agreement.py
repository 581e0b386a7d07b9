#!/usr/bin/env python3
"""How far two correct implementations of one QDQ file can disagree (issue 21, line 5).

For each QDQ file: top-1 agreement and logit SQNR between lowbit's integer runtime and ONNX Runtime
with its graph optimizations (fused int8 kernels), between lowbit and ONNX Runtime without them
(every QuantizeLinear/DequantizeLinear and operator evaluated node by node in float, the arithmetic
the file means), and between those two ONNX Runtime sessions themselves. Then, on the first BISECT
images, the share of elements of every quantized activation (each QuantizeLinear output, in graph
order) on which lowbit and ONNX Runtime without optimizations differ, and the largest difference in
integer steps: where rounding ties first split the two and how the network amplifies them.

usage: python bench/ort_self_agreement.py [--data DIR] [--size WxH] [--bisect N] QDQ.onnx [...]
(from the repository root after `cargo build --release` and ./scripts/test.sh, which makes ./venv
with onnxruntime and the lowbit wheel; default data ../shared/data/photos224, ImageNet preset)
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

import lowbit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")


def load_images(data, size):
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "x")
        cmd = [LOWBIT, "dump-data", data, "--preset", "imagenet", "--split", "test", "-o", prefix]
        if size:
            cmd += ["--size", size]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        meta = json.load(open(prefix + ".json"))
        return np.fromfile(prefix + ".f32", dtype="<f4").reshape(meta["shape"])


def ort_session(model, optimized):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    if not optimized:
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


def batched(run, x, bs=32):
    return np.concatenate([run(x[i:i + bs]) for i in range(0, len(x), bs)])


def sqnr(a, ref):
    return 10 * np.log10((ref ** 2).sum() / max(((a - ref) ** 2).sum(), 1e-30))


def with_quantized_outputs(path):
    """The model with every QuantizeLinear output added as a graph output; their names."""
    m = onnx.load(path)
    names = [n.output[0] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    have = {o.name for o in m.graph.output}
    for q in names:
        if q not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(q, onnx.TensorProto.UINT8, None))
    return m, names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "photos224"))
    ap.add_argument("--size", default=None)
    ap.add_argument("--bisect", type=int, default=8)
    a = ap.parse_args()
    ort.set_default_logger_severity(3)
    x = load_images(a.data, a.size)
    print(f"{len(x)} images from {a.data}; ONNX Runtime {ort.__version__}; lowbit ISA {lowbit.cpu()}")
    print()
    print("| file | lowbit vs ORT optimized | lowbit vs ORT unoptimized | ORT optimized vs ORT unoptimized |")
    print("|---|---|---|---|")
    for p in a.files:
        lm = lowbit.Model(p, threads=2)
        lb = batched(lambda b: lm.run(b)[0], x)
        outs = {}
        for opt in (True, False):
            s = ort_session(p, opt)
            name = s.get_inputs()[0].name
            outs[opt] = batched(lambda b: s.run(None, {name: b})[0], x)

        def cell(u, v):
            return f"{(u.argmax(1) == v.argmax(1)).mean() * 100:.2f}% same top-1, {sqnr(u, v):.1f} dB"

        print(f"| {os.path.basename(p)} | {cell(lb, outs[True])} | {cell(lb, outs[False])} | "
              f"{cell(outs[True], outs[False])} |")
    if a.bisect <= 0:
        return
    for p in a.files:
        print()
        print(f"{os.path.basename(p)}: quantized activations, lowbit vs ORT unoptimized, first {a.bisect} images")
        print("| # | tensor | elements differing | largest difference (steps) |")
        print("|---|---|---|---|")
        m, names = with_quantized_outputs(p)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "all.onnx")
            onnx.save(m, path)
            xb = x[:a.bisect]
            s = ort_session(path, False)
            ro = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: xb})))
            lm = lowbit.Model(path)
            lo = dict(zip(lm.output_names, lm.run(xb)))
        for i, q in enumerate(names):
            d = np.abs(ro[q].astype(np.int32) - lo[q].astype(np.int32))
            print(f"| {i} | {q} | {(d > 0).mean() * 100:.3f}% | {d.max()} |")


if __name__ == "__main__":
    main()
