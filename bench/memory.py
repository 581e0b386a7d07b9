#!/usr/bin/env python3
"""Memory of the int8 plan against the f32 plan, and file sizes (issue 4, line 5).

For every zoo model: the f32 plan's peak activation arena and packed weight bytes (`lowbit bench
--json` on the float file) against the same for the integer plan of two QDQ files, plus the bytes on
disk: lowbit's own W8A8 export (`lowbit quantize`, defaults, 1,000 calibration images) and ONNX
Runtime's quantize_static file (per-channel int8 weights, uint8 activations; bench/ort_qdq.py).
Targets: arena <= 30%, weights <= 26% of f32.

usage: python bench/memory.py [QDQ_DIR]   (after `cargo build --release`, with ./venv)
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "..", "shared", "zoo")
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
MODELS = ["mnist-cnn", "fmnist-resnet", "fmnist-mobilenet", "mobilenetv2-imagenet", "efficientnet-lite0-imagenet",
          "ppocr-textline-cls", "resnet18-random"]
SHAPE = {"ppocr-textline-cls": "1,3,48,192"}
SHARED = os.path.join(ROOT, "..", "shared")
PHOTOS = os.path.join(SHARED, "data", "photos224")
MNIST = os.path.join(SHARED, "data", "mnist10k")
CALIB = {  # preset, calibration data, split
    "mnist-cnn": ("mnist", MNIST, "test"),
    "fmnist-resnet": ("fmnist", "/usr/share/datasets/fashion-mnist", "train"),
    "fmnist-mobilenet": ("fmnist", "/usr/share/datasets/fashion-mnist", "train"),
    "mobilenetv2-imagenet": ("imagenet", PHOTOS, "test"),
    "efficientnet-lite0-imagenet": ("imagenet", PHOTOS, "test"),
    "ppocr-textline-cls": ("ppocr", PHOTOS, "test"),
    "resnet18-random": ("imagenet", PHOTOS, "test"),
}


def lowbit_qdq(model, out):
    preset, data, split = CALIB[model]
    cmd = [LOWBIT, "quantize", os.path.join(ZOO, model + ".onnx"), "--calib", data, "--calib-split", split,
           "--calib-n", "1000", "--preset", preset, "-o", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def plan(path, model, tmp):
    js = os.path.join(tmp, "b.json")
    cmd = [LOWBIT, "bench", path, "--iters", "2", "--warmup", "1", "--json", js]
    if model in SHAPE:
        cmd += ["--input-shape", SHAPE[model]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    j = json.load(open(js))
    return j["arena_bytes"], j["weight_bytes"], j.get("int8_steps", 0)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        qdir = sys.argv[1] if len(sys.argv) > 1 else tmp
        if len(sys.argv) <= 1:
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ort_qdq.py"), qdir, "--models", ",".join(MODELS)],
                           check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("| model | QDQ file by | f32 arena KB | int8 arena KB | arena | f32 weights KB | int8 weights KB | "
              "weights | f32 file KB | QDQ file KB | file |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for m in MODELS:
            f = os.path.join(ZOO, m + ".onnx")
            fa, fw, _ = plan(f, m, tmp)
            fs = os.path.getsize(f)
            own = os.path.join(tmp, m + "-lowbit.onnx")
            lowbit_qdq(m, own)
            for who, q in [("lowbit", own), ("ORT", os.path.join(qdir, m + "-ort-qdq.onnx"))]:
                if not os.path.exists(q):
                    print(f"| {m} | {who} | no QDQ file |")
                    continue
                qa, qw, _ = plan(q, m, tmp)
                qs = os.path.getsize(q)
                print(f"| {m} | {who} | {fa / 1e3:.1f} | {qa / 1e3:.1f} | {qa / fa * 100:.1f}% | {fw / 1e3:.1f} | "
                      f"{qw / 1e3:.1f} | {qw / fw * 100:.1f}% | {fs / 1e3:.1f} | {qs / 1e3:.1f} | {qs / fs * 100:.1f}% |")

if __name__ == "__main__":
    main()
