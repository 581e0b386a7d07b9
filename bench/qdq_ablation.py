#!/usr/bin/env python3
"""Which activation quantizations of a QDQ file cost accuracy: ONNX Runtime with graph optimizations
off (every QuantizeLinear/DequantizeLinear computed in float, the file's own arithmetic) runs the file
with some activation Q/DQ pairs bypassed, and scores each variant against the float model.

usage: python bench/qdq_ablation.py --qdq Q.onnx --float FLOAT.onnx --data PREFIX --task segment|classify
           [--variants weights-only,input-only,all-but-input,all,prefix:8,only:3]
PREFIX is a `lowbit dump-data ... -o PREFIX` dump (PREFIX.npy). Activation Q nodes are numbered in graph
order, 0 being the model input's. Variants: weights-only (no activation quantized), input-only,
all-but-input, all, prefix:N (the first N), suffix:N (the last N), only:I (the I-th alone), all-but:I (all
but the I-th; negative I counts from the end), all-but-suffix:N (all but the last N), and input-rounded (the float
model on the input rounded to the file's input grid). segment: mask IoU (> 0.5) per image and pooled
over all pixels; classify: top-1 agreement.
"""
import argparse

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def bypass(m0, keep):
    """A copy of m0 with every activation Q/DQ pair not in `keep` removed."""
    m = onnx.ModelProto()
    m.CopyFrom(m0)
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    qin = {q.output[0]: q.input[0] for i, q in enumerate(qs) if i not in keep}
    alias, nodes = {}, []
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in qin:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in qin:
            alias[n.output[0]] = qin[n.input[0]]
            continue
        nodes.append(n)
    for n in nodes:
        for k, x in enumerate(n.input):
            if x in alias:
                n.input[k] = alias[x]
    for o in m.graph.output:
        if o.name in alias:
            nodes.append(helper.make_node("Identity", [alias[o.name]], [o.name]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qdq", required=True)
    ap.add_argument("--float", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--task", choices=["segment", "classify"], required=True)
    ap.add_argument("--variants", default="weights-only,input-only,all-but-input,all,input-rounded")
    a = ap.parse_args()
    x = np.load(a.data + ".npy").astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3

    def run(model, xs):
        s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(), so)
        i = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {i: xs[k : k + 1]})[0] for k in range(len(xs))])

    ref = run(a.float, x)
    m0 = onnx.load(a.qdq)
    qs = [n for n in m0.graph.node if n.op_type == "QuantizeLinear"]
    init = {t.name: numpy_helper.to_array(t) for t in m0.graph.initializer}
    n = len(qs)

    def score(out):
        if a.task == "classify":
            return "top-1 agreement %.4f" % np.mean(out.argmax(1) == ref.argmax(1))
        A, B = ref > 0.5, out > 0.5
        per = [1.0 if (p | q).sum() == 0 else (p & q).sum() / (p | q).sum() for p, q in zip(A, B)]
        return "mask IoU mean per image %.4f, pooled %.4f" % (np.mean(per), (A & B).sum() / (A | B).sum())

    print(f"{a.qdq}: {n} activation QuantizeLinear nodes; input {qs[0].input[0]}")
    for v in a.variants.split(","):
        if v == "input-rounded":
            s, z = float(init[qs[0].input[1]]), int(init[qs[0].input[2]])
            print(v, score(run(a.float, ((np.clip(np.round(x / s) + z, 0, 255) - z) * s).astype(np.float32))), flush=True)
            continue
        keep = {"weights-only": set(), "input-only": {0}, "all-but-input": set(range(1, n)), "all": set(range(n))}.get(v)
        if keep is None:
            kind, k = v.split(":")
            if kind == "prefix":
                keep = set(range(int(k)))
            elif kind == "suffix":
                keep = set(range(n - int(k), n))
            elif kind == "all-but":
                keep = set(range(n)) - {int(k) % n}
            elif kind == "all-but-suffix":
                keep = set(range(n - int(k)))
            else:
                keep = {int(k)}
        names = "" if len(keep) > 3 and n - len(keep) > 3 else " (" + ", ".join(
            qs[i].input[0] for i in (sorted(keep) if len(keep) <= 3 else sorted(set(range(n)) - keep))) + ")"
        print(v, score(run(bypass(m0, keep), x)) + names, flush=True)


if __name__ == "__main__":
    main()
