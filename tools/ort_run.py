#!/usr/bin/env python3
"""Runs an ONNX model in ONNX Runtime for lowbit's live cross-check tests.

usage: ort_run.py MODEL INPUT.f32 N,C,H,W OUTPUT.f32 [THREADS [OPT]]
OPT "none" disables ONNX Runtime's graph optimizations (QDQ models then run as float simulation).
Reads raw little-endian float32 input of the given shape, feeds it to the model's first input,
writes the first output as raw float32 and prints {"shape": [...]} on stdout.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, inp, shape, out = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    shape = [int(s) for s in shape.split(",")]
    x = np.fromfile(inp, dtype="<f4").reshape(shape)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if len(sys.argv) > 6 and sys.argv[6] == "none":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.ascontiguousarray(y, dtype="<f4").tofile(out)
    print(json.dumps({"shape": list(y.shape)}))


if __name__ == "__main__":
    main()
