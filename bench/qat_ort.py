#!/usr/bin/env python3
"""QAT results in ONNX Runtime: every QDQ file given runs in ONNX Runtime (CPU) and on lowbit's
integer runtime over the 10,000 Fashion-MNIST test images; prints top-1 of both and the share of
images where they predict the same class (issue acceptance: >= 99.5%).

usage: python bench/qat_ort.py FILE.onnx [FILE.onnx ...]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
FASHION = "/usr/share/datasets/fashion-mnist"


def main():
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "test")
        subprocess.run([LOWBIT, "dump-data", FASHION, "--preset", "fmnist", "--split", "test", "-o", prefix],
                       check=True, stdout=subprocess.DEVNULL)
        x = np.fromfile(prefix + ".f32", dtype="<f4").reshape(-1, 1, 28, 28)
        labels = np.fromfile(prefix + ".labels", dtype=np.uint8)
        print("| model | ORT top-1 | lowbit top-1 | same prediction |")
        print("|---|---|---|---|")
        for f in files:
            sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            ort_pred = np.concatenate([sess.run(None, {name: x[i:i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
            js = os.path.join(tmp, "eval.json")
            subprocess.run([LOWBIT, "eval", f, "--data", FASHION, "--preset", "fmnist", "--threads", "2",
                            "--batch", "500", "--json", js], check=True, stdout=subprocess.DEVNULL)
            ours = np.array(json.load(open(js))["predictions"])
            same = (ours == ort_pred).mean()
            print(f"| {os.path.basename(f)} | {(ort_pred == labels).mean() * 100:.2f} | "
                  f"{(ours == labels).mean() * 100:.2f} | {same * 100:.2f}% |")


if __name__ == "__main__":
    main()
