#!/usr/bin/env python3
"""lowbit binary kernels vs f32 (lowbit's and ONNX Runtime's), in one run.

usage: python bench/binary_vs_ort.py [--iters N] [--rounds R]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)

1. One 3x3 convolution 256->256 on 14x14 (pad 1), 1 thread, batch 1:
   - ONNX Runtime fp32 and lowbit fp32 on the float file;
   - lowbit binary on the same convolution as lowbit exports it (uint8 input -> Sign(Sign(x)+0.5)
     -> int8 Q/DQ -> Conv with +-1 weights -> uint8 output). The file time includes quantizing the
     f32 input and dequantizing the output; the conv step time (LOWBIT_PROFILE) is the kernel
     alone, which is what a binary layer costs inside a binary network (its input and output
     stay uint8).
2. ResNet-18 (resnet18-random's shapes), 1 thread, batch 1: ONNX Runtime fp32, lowbit int8
   (lowbit quantize, per-channel W8A8) and lowbit binary (lowbit binarize: 16 binary 3x3 convs,
   first conv, shortcut projections and classifier int8).
Every configuration is measured in alternating rounds (the machines are shared and noisy); the
table shows the median over rounds of per-round median latencies. Written to bench/RESULTS.md
(section "Binary vs ONNX Runtime").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_ort import cpu_model, replace_section  # noqa: E402
from int8_vs_ort import ort_median  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "..", "shared", "zoo")
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "photos224")
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")


def conv_models(d, c=256, hw=14):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.05
    b = rng.standard_normal(c).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv")
    g = helper.make_graph([conv], "conv", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    f32 = os.path.join(d, "conv256-f32.onnx")
    onnx.save(m, f32)
    # The binary version, in lowbit's export format.
    ws = np.abs(w).mean(axis=(1, 2, 3)).astype(np.float32)
    wq = np.where(w >= 0, 1, -1).astype(np.int8)
    lvl = np.float32(1.0 / 64)
    bq = np.round(b / (ws * lvl)).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"), numpy_helper.from_array(lvl, "ls"),
        numpy_helper.from_array(np.array(0, np.int8), "lz"), numpy_helper.from_array(wq, "wq"),
        numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(bq, "bq"),
        numpy_helper.from_array((ws * lvl).astype(np.float32), "bs"),
        numpy_helper.from_array(np.array(0.05, np.float32), "ys"), numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("Sign", ["xd"], ["s0"]),
        helper.make_node("Add", ["s0", "half"], ["s1"]),
        helper.make_node("Sign", ["s1"], ["pm1"]),
        helper.make_node("QuantizeLinear", ["pm1", "ls", "lz"], ["bq8"]),
        helper.make_node("DequantizeLinear", ["bq8", "ls", "lz"], ["bx"]),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs"], ["bd"], axis=0),
        helper.make_node("Conv", ["bx", "wd", "bd"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="binary_conv"),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"]),
    ]
    g = helper.make_graph(nodes, "binconv", [x], [y], inits)
    bin_path = os.path.join(d, "conv256-binary.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), bin_path)
    return f32, bin_path


def lowbit_run(path, iters, profile=False):
    env = dict(os.environ)
    if profile:
        env["LOWBIT_PROFILE"] = "1"
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        p = subprocess.run([LOWBIT, "bench", path, "--threads", "1", "--iters", str(iters), "--warmup", "5", "--json", f.name],
                           check=True, capture_output=True, text=True, env=env)
        j = json.load(open(f.name))
    step = None
    if profile:
        for ln in p.stdout.splitlines():
            if ln.startswith("binary_conv") or ln.startswith("conv "):
                cols = ln.split()
                # layer, kernel words..., [1, c, h, w], ms, share, GMAC/s
                step = float(cols[-3])
                break
    return j["median_ms"], step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not os.path.exists(LOWBIT):
        sys.exit(f"{LOWBIT} not found: run `cargo build --release` first")
    tmp = tempfile.mkdtemp(prefix="lowbit-binary-bench-")
    f32, binc = conv_models(tmp)
    r18 = os.path.join(ZOO, "resnet18-random.onnx")
    r18_bin = os.path.join(tmp, "resnet18-binary.onnx")
    r18_int8 = os.path.join(tmp, "resnet18-int8.onnx")
    subprocess.run([LOWBIT, "binarize", r18, "--calib", PHOTOS, "--calib-n", "8", "-o", r18_bin], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([LOWBIT, "quantize", r18, "--calib", PHOTOS, "--calib-n", "8", "--method", "minmax", "-o", r18_int8],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = {k: [] for k in ["conv_ort", "conv_lowbit_f32", "conv_bin_file", "conv_bin_step", "r18_ort", "r18_int8",
                           "r18_bin"]}
    for r in range(a.rounds):
        res["conv_ort"].append(ort_median(f32, 1, 1, a.iters))
        res["conv_lowbit_f32"].append(lowbit_run(f32, a.iters)[0])
        t, step = lowbit_run(binc, a.iters, profile=True)
        res["conv_bin_file"].append(t)
        res["conv_bin_step"].append(step)
        res["r18_ort"].append(ort_median(r18, 1, 1, max(10, a.iters // 4)))
        res["r18_int8"].append(lowbit_run(r18_int8, a.iters)[0])
        res["r18_bin"].append(lowbit_run(r18_bin, a.iters)[0])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in res.items()), flush=True)
    med = {k: float(np.median(v)) for k, v in res.items()}
    body = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores), ONNX Runtime {ort.__version__}",
            f"(CPU EP, optimizations ALL), 1 thread, batch 1; median over {a.rounds} alternating rounds of per-round medians.",
            "Reproduce: `python bench/binary_vs_ort.py`; per-path kernel figures: `cargo bench -p lowbit-kernels --bench binary`.",
            "",
            "| what | ms | speed-up of lowbit binary |",
            "|---|---|---|",
            f"| 3x3 conv 256->256 14x14: ONNX Runtime fp32 | {med['conv_ort']:.3f} | {med['conv_ort'] / med['conv_bin_step']:.1f}x (conv step), "
            f"{med['conv_ort'] / med['conv_bin_file']:.1f}x (whole file) |",
            f"| same conv: lowbit fp32 | {med['conv_lowbit_f32']:.3f} | {med['conv_lowbit_f32'] / med['conv_bin_step']:.1f}x (conv step), "
            f"{med['conv_lowbit_f32'] / med['conv_bin_file']:.1f}x (whole file) |",
            f"| same conv: lowbit binary, conv step (uint8 in, uint8 out) | {med['conv_bin_step']:.3f} | - |",
            f"| same conv: lowbit binary, whole file (f32 in/out, with Q/DQ) | {med['conv_bin_file']:.3f} | - |",
            f"| ResNet-18: ONNX Runtime fp32 | {med['r18_ort']:.2f} | {med['r18_ort'] / med['r18_bin']:.1f}x |",
            f"| ResNet-18: lowbit int8 (W8A8 per-channel) | {med['r18_int8']:.2f} | {med['r18_int8'] / med['r18_bin']:.2f}x |",
            f"| ResNet-18 binary (16 binary 3x3 convs; first conv, shortcuts, fc int8): lowbit | {med['r18_bin']:.2f} | - |"]
    out = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(out).read() if os.path.exists(out) else ""
    text = replace_section(text, "## Binary vs ONNX Runtime", "\n".join(body))
    open(out + ".tmp", "w").write(text)
    os.replace(out + ".tmp", out)
    print("\n".join(body))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
