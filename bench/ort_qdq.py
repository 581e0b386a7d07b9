#!/usr/bin/env python3
"""Writes ONNX Runtime quantize_static QDQ files (per-channel int8 weights, uint8 activations, MinMax)
for zoo models, calibrated on images dumped by `lowbit dump-data`.

usage: python bench/ort_qdq.py OUT_DIR [--models a,b] [--calib-n N]
Prints one line per written file. Used by bench/int8_vs_ort.py and the integer-runtime tests.
"""
import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
LOWBIT = os.environ.get("LOWBIT_BIN", os.path.join(ROOT, "target", "release", "lowbit"))
DATA = {
    "mnist-cnn": ("mnist", os.path.join(SHARED, "data", "mnist10k")),
    "fmnist-resnet": ("fmnist", os.path.join(SHARED, "data", "mnist10k")),
    "fmnist-mobilenet": ("fmnist", os.path.join(SHARED, "data", "mnist10k")),
}
PHOTOS = ("imagenet", os.path.join(SHARED, "data", "photos224"))


class Reader(CalibrationDataReader):
    def __init__(self, name, x):
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}


def main():
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--models", default="resnet18-random,mobilenetv2-imagenet")
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--data", default=None, help="image folder/IDX set to calibrate on (default by model)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for m in a.models.split(","):
        preset, data = DATA.get(m, PHOTOS)
        if m == "ppocr-textline-cls":
            preset = "ppocr"
        data = a.data or data
        model = os.path.join(SHARED, "zoo", m + ".onnx")
        prefix = os.path.join(a.out, m + "-calib")
        subprocess.run([LOWBIT, "dump-data", data, "--preset", preset, "--limit", str(a.calib_n), "-o", prefix],
                       check=True, stdout=subprocess.DEVNULL)
        meta = json.load(open(prefix + ".json"))
        x = np.fromfile(prefix + ".f32", dtype="<f4").reshape(meta["shape"])
        pre = os.path.join(a.out, m + "-pre.onnx")
        try:
            quant_pre_process(model, pre, skip_symbolic_shape=True)
        except Exception as e:
            print(f"{m}: pre-processing failed ({e}); quantizing the original", file=sys.stderr)
            pre = model
        name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        out = os.path.join(a.out, m + "-ort-qdq.onnx")
        # ORT's pre-processed model first; when ONNX Runtime cannot load the result (ppocr: per-axis
        # DequantizeLinear in an opset-11 model), the original model.
        for src in dict.fromkeys([pre, model]):
            quantize_static(src, out, Reader(name, x), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            try:
                ort.InferenceSession(out, providers=["CPUExecutionProvider"])
                break
            except Exception as e:
                print(f"{m}: ONNX Runtime cannot load its quantized {os.path.basename(src)} ({str(e)[:120]})", file=sys.stderr)
                # kept for lowbit (which runs it): `-unloadable` marks what ORT itself rejects
                os.replace(out, os.path.join(a.out, m + "-ort-qdq-unloadable.onnx"))
        print(out, flush=True)


if __name__ == "__main__":
    main()
