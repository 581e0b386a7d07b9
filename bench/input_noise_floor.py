#!/usr/bin/env python3
"""How often a float classifier's top-1 moves when its input moves by less than a gray level.

Runs the float model (ONNX Runtime) on preprocessed images (`lowbit dump-data ... -o PREFIX`,
PREFIX.npy) and again with uniform noise of +-A gray levels added to every pixel (a gray level of
channel c is 1 / (255 * std_c) in the normalised input), and prints the top-1 agreement per draw.
It is the resolution of a top-1 agreement figure on those images: a quantized model cannot be told
apart from the float one below what imperceptible input noise already flips.

usage: python bench/input_noise_floor.py MODEL.onnx PREFIX.npy [--std 0.229,0.224,0.225]
       [--amplitudes 0.5,1] [--draws 3] [--threads 1]
"""
import argparse

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--std", default="0.229,0.224,0.225")
    ap.add_argument("--amplitudes", default="0.5,1")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    x = np.load(a.data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name

    def top1(v):
        return np.concatenate([s.run(None, {name: v[i:i + 16]})[0] for i in range(0, len(v), 16)]).argmax(1)

    ref = top1(x)
    std = np.array([float(v) for v in a.std.split(",")], np.float32).reshape(1, -1, 1, 1)
    level = 1.0 / (255.0 * std)
    rng = np.random.default_rng(0)
    print(f"{a.model} on {len(x)} images of {a.data}")
    print("| noise (gray levels) | draw | top-1 agreement with the noiseless input |")
    print("|---|---|---|")
    for amp in [float(v) for v in a.amplitudes.split(",")]:
        for d in range(a.draws):
            n = (rng.random(x.shape, dtype=np.float32) - 0.5) * 2 * amp * level
            print(f"| +-{amp} | {d} | {(top1(x + n) == ref).mean() * 100:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
