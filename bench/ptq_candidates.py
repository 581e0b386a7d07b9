#!/usr/bin/env python3
"""Every candidate `lowbit quantize --method auto` weighs, scored on the calibration images (what auto sees) and on the
evaluation images (what it cannot see), W8A8, labelled zoo models.

usage: python bench/ptq_candidates.py [--models mnist-cnn,fmnist-resnet,fmnist-mobilenet]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)

For each range method with and without bias correction: `lowbit quantize --method M [--no-bias-correction]` on the
first 1,000 calibration images, then ONNX Runtime runs the file. Columns: top-1 agreement with float and mean KL on the
calibration images, then top-1 accuracy and top-1 agreement with float on the evaluation images. The row `auto` picks is
marked. Prints a markdown table (bench/RESULTS.md quotes it).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptq_vs_ort import LOWBIT, MODELS, SHARED, dump, kl, ort_logits  # noqa: E402

METHODS = ["mse", "percentile:0.9999", "percentile:0.99999", "minmax", "entropy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mnist-cnn,fmnist-resnet,fmnist-mobilenet")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lowbit-cand-")
    print("| model | method | bias corr. | calib. agreement | calib. KL | test top-1 | test agreement | auto |")
    print("|---|---|---|---|---|---|---|---|")
    for m in a.models.split(","):
        preset, cdata, csplit, edata, esplit = MODELS[m]
        model = os.path.join(SHARED, "zoo", m + ".onnx")
        xc, _ = dump(cdata, csplit, preset, 1000, os.path.join(tmp, m + "-calib"))
        xe, ye = dump(edata, esplit, preset, None, os.path.join(tmp, m + "-eval"))
        fc, fe = ort_logits(model, xc), ort_logits(model, xe)
        base = [LOWBIT, "quantize", model, "--calib", cdata, "--calib-split", csplit, "--calib-n", "1000", "--preset",
                preset, "--threads", "2"]
        j = os.path.join(tmp, m + "-auto.json")
        subprocess.run(base + ["-o", os.path.join(tmp, m + "-auto.onnx"), "--json", j], check=True,
                       stdout=subprocess.DEVNULL)
        c0 = json.load(open(j))["method_candidates"][0]
        for meth in METHODS:
            for bc in (True, False):
                f = os.path.join(tmp, f"{m}-{meth}-{bc}.onnx")
                subprocess.run(base + ["--method", meth, "-o", f] + ([] if bc else ["--no-bias-correction"]),
                               check=True, stdout=subprocess.DEVNULL)
                qc, qe = ort_logits(f, xc), ort_logits(f, xe)
                picked = c0["method"] == meth and c0["bias_correction"] == bc
                print(f"| {m} | {meth} | {'yes' if bc else 'no'} | {(qc.argmax(1) == fc.argmax(1)).mean() * 100:.1f}% | "
                      f"{kl(fc, qc):.6f} | {(qe.argmax(1) == ye).mean() * 100:.2f}% | "
                      f"{(qe.argmax(1) == fe.argmax(1)).mean() * 100:.2f}% | {'**picked**' if picked else ''} |",
                      flush=True)


if __name__ == "__main__":
    main()
