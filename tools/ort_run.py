#!/usr/bin/env python3
"""Runs an ONNX model in ONNX Runtime for lowbit's live cross-check tests.

usage: ort_run.py MODEL INPUT.f32 N,C,H,W OUTPUT.f32 [THREADS [OPT [all]]]
OPT "none" disables ONNX Runtime's graph optimizations (QDQ models then run as float simulation).
Reads raw little-endian float32 input of the given shape, feeds it to the model's first input,
writes the first output as raw float32 and prints {"shape": [...]} on stdout; with "all", writes
every output one after the other and prints {"shapes": [[...], ...]}.
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
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    declared = sess.get_inputs()[0].shape
    if len(declared) == len(shape) and any(isinstance(d, int) and d != s for d, s in zip(declared, shape)):
        # A file with a fixed input size (old exports) run at another size, as lowbit's
        # --input-shape does: the same graph with the input's dimensions left open.
        import onnx

        m = onnx.load(model)
        for d in m.graph.input[0].type.tensor_type.shape.dim:
            d.ClearField("dim_value")
            d.dim_param = "d"
        for o in m.graph.output:
            for d in o.type.tensor_type.shape.dim:
                d.ClearField("dim_value")
                d.dim_param = "o"
        del m.graph.value_info[:]
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    # Inputs no node reads (a file another tool rewrote keeps them) are still required by ONNX
    # Runtime: zeros of their declared shape.
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}
    for i in sess.get_inputs()[1:]:
        feed[i.name] = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=types.get(i.type, np.float32))
    ys = sess.run(None, feed)
    if len(sys.argv) > 7 and sys.argv[7] == "all":
        with open(out, "wb") as f:
            for y in ys:
                f.write(np.ascontiguousarray(y, dtype="<f4").tobytes())
        print(json.dumps({"shapes": [list(y.shape) for y in ys]}))
        return
    y = ys[0]
    np.ascontiguousarray(y, dtype="<f4").tofile(out)
    print(json.dumps({"shape": list(y.shape)}))


if __name__ == "__main__":
    main()
