#!/usr/bin/env python3
"""lowbit post-training quantization vs ONNX Runtime's quantize_static, W8A8, same models, same
calibration images, same evaluation images, in one run.

usage: python bench/ptq_vs_ort.py [--models a,b] [--eval-limit N]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)

ONNX Runtime is given its best settings: QDQ format, per-channel int8 weights, uint8 activations,
and each of its calibration methods (MinMax, Entropy, Percentile); the best of them is reported.
Both tools calibrate on the same preprocessed images, dumped once by `lowbit dump-data`.
Labelled data: top-1 accuracy. Unlabelled photos: top-1 agreement with the float model.
Writes the table to bench/RESULTS.md (section "PTQ W8A8 vs ONNX Runtime quantize_static").
"""
import argparse
import logging
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
FASHION = "/usr/share/datasets/fashion-mnist"
PHOTOS = os.path.join(SHARED, "data", "photos224")
SCENES = os.path.join(SHARED, "data", "scenes")
MNIST = os.path.join(SHARED, "data", "mnist10k")

# model, preset, calibration data + split, evaluation data + split
# (ImageNet-style models: with `--scene-crops`, evaluated on the 1,008 crops of scenes/, 36 per photo at several
# positions and scales, generated deterministically by `lowbit dump-data --crops 36`, none used for calibration)
SCENE_CROPS = ["--crops", "36", "--size", "224x224"]
MODELS = {
    "mnist-cnn": ("mnist", MNIST, "test", MNIST, "test"),
    "fmnist-resnet": ("fmnist", FASHION, "train", FASHION, "test"),
    "fmnist-mobilenet": ("fmnist", FASHION, "train", FASHION, "test"),
    "mobilenetv2-imagenet": ("imagenet", PHOTOS, "test", PHOTOS, "test"),
    "efficientnet-lite0-imagenet": ("imagenet", PHOTOS, "test", PHOTOS, "test"),
    "ppocr-textline-cls": ("ppocr", PHOTOS, "test", PHOTOS, "test"),
}


def dump(data, split, preset, limit, prefix, extra=()):
    cmd = [LOWBIT, "dump-data", data, "--preset", preset, "--split", split, "-o", prefix, *extra]
    if limit:
        cmd += ["--limit", str(limit)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    meta = json.load(open(prefix + ".json"))
    x = np.fromfile(prefix + ".f32", dtype="<f4").reshape(meta["shape"])
    y = np.fromfile(prefix + ".labels", dtype=np.uint8) if meta["labelled"] else None
    return x, y


class Reader(CalibrationDataReader):
    def __init__(self, name, x, batch=1):
        self.name, self.x, self.i, self.batch = name, x, 0, batch

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: b}

    def rewind(self):
        self.i = 0


def ort_logits(path, x, batch=50):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def kl(ref_logits, logits):
    """Mean KL(softmax(ref) || softmax(logits)) in nats, as lowbit's `auto` scores its candidates (which also floors
    the candidate's probabilities at 1e-30)."""
    def logsoftmax(v):
        v = v.astype(np.float64) - v.max(1, keepdims=True)
        return v - np.log(np.exp(v).sum(1, keepdims=True))
    lp, lq = logsoftmax(ref_logits), logsoftmax(logits)
    return float((np.exp(lp) * (lp - np.maximum(lq, math.log(1e-30)))).sum(1).mean())


def mcnemar_p(b, c):
    """Exact two-sided McNemar p-value: b and c images that only one of two classifiers gets right."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def score(logits, labels, ref_logits):
    pred = logits.argmax(1)
    if labels is not None:
        return float((pred == labels).mean())
    return float((pred == ref_logits.argmax(1)).mean())


def main():
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib-n", type=int, default=1000)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--scene-crops", action="store_true",
                    help="evaluate the ImageNet-style models on the scene crops instead of photos224")
    ap.add_argument("--title", default="## PTQ W8A8 vs ONNX Runtime quantize_static",
                    help="the RESULTS.md section to write")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lowbit-ptq-")
    rows = []
    for m in a.models.split(","):
        preset, cdata, csplit, edata, esplit = MODELS[m]
        eextra = []
        if a.scene_crops and preset == "imagenet":
            edata, esplit, eextra = SCENES, "test", SCENE_CROPS
        model = os.path.join(SHARED, "zoo", m + ".onnx")
        xc, _ = dump(cdata, csplit, preset, a.calib_n, os.path.join(tmp, m + "-calib"))
        xe, ye = dump(edata, esplit, preset, a.eval_limit, os.path.join(tmp, m + "-eval"), eextra)
        ref = ort_logits(model, xe)
        ref_c = ort_logits(model, xc)
        float_score = score(ref, ye, ref)
        truth = ye if ye is not None else ref.argmax(1)
        # ONNX Runtime, each calibration method
        name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        # ORT's recommended pre-processing (shape inference, graph optimization incl. BN folding)
        pre = os.path.join(tmp, m + "-pre.onnx")
        try:
            quant_pre_process(model, pre, skip_symbolic_shape=True)
        except Exception as e:
            print(f"{m}: ORT pre-processing failed ({e}); quantizing the original", file=sys.stderr)
            pre = model
        best = (-1, None)
        ort_runs = {}  # method -> (test score, test predictions, KL to float on the calibration images)
        for meth in (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile):
            out = os.path.join(tmp, f"{m}-ort-{meth.name}.onnx")
            t = time.time()
            sc = None
            # ORT's pre-processed model first; if ORT cannot quantize or load that, the original.
            for src in dict.fromkeys([pre, model]):
                try:
                    quantize_static(src, out, Reader(name, xc), quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=meth)
                    qe = ort_logits(out, xe)
                    run = (score(qe, ye, ref), qe.argmax(1), kl(ref_c, ort_logits(out, xc)))
                    ort_runs[meth.name], sc = run, run[0]
                    break
                except Exception as e:  # report, keep going
                    print(f"{m}: ORT {meth.name} on {os.path.basename(src)} failed: {str(e)[:200]}", file=sys.stderr)
            if sc is None:
                continue
            print(f"{m:28} ORT {meth.name:10} {sc * 100:6.2f}%  calibration KL {ort_runs[meth.name][2]:.6f}  "
                  f"({time.time() - t:.0f} s)", flush=True)
            if sc > best[0]:
                best = (sc, meth.name)
        if not ort_runs:
            print(f"{m}: ONNX Runtime quantized it with no method; skipped", file=sys.stderr)
            continue
        # lowbit (its own calibration images: the same dumped set is what it loads itself)
        j = os.path.join(tmp, m + "-lowbit.json")
        cmd = [LOWBIT, "quantize", model, "--calib", cdata, "--calib-split", csplit, "--calib-n", str(a.calib_n), "--preset", preset,
               "-o", os.path.join(tmp, m + "-lowbit.onnx"), "--json", j]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lq = ort_logits(os.path.join(tmp, m + "-lowbit.onnx"), xe)
        lb = score(lq, ye, ref)
        # ORT's method with the lowest KL to float on the calibration images.
        by_kl = min(ort_runs, key=lambda k: ort_runs[k][2])
        # Paired comparison with ORT's best-on-test file: images only one of the two gets right.
        bp = ort_runs[best[1]][1]
        only_lb = int(((lq.argmax(1) == truth) & (bp != truth)).sum())
        only_ort = int(((lq.argmax(1) != truth) & (bp == truth)).sum())
        # Closeness to float on the evaluation images (for unlabelled data this is the score itself).
        fp = ref.argmax(1)
        agree = (float((bp == fp).mean()), float((lq.argmax(1) == fp).mean()))
        # the same lowbit file, run by lowbit's own executor
        cmd = [LOWBIT, "eval", os.path.join(tmp, m + "-lowbit.onnx"), "--data", edata, "--split", esplit, "--preset", preset,
               "--json", j + ".eval", *eextra]
        if ye is None:
            cmd += ["--reference", model]
        if a.eval_limit:
            cmd += ["--limit", str(a.eval_limit)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ev = json.load(open(j + ".eval"))
        lb_self = ev["top1"] if ye is not None else ev["agreement"]["top1"]
        metric = "top-1" if ye is not None else "agreement"
        print(f"{m:28} lowbit {lb * 100:6.2f}% in ORT, {lb_self * 100:6.2f}% in lowbit; float {float_score * 100:.2f}%", flush=True)
        rows.append((m, metric, len(xe), float_score, best[0], best[1], lb, lb_self, ort_runs[by_kl][0], by_kl,
                     only_lb, only_ort, agree))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = " ".join(sys.argv[1:])
    body = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, ONNX Runtime {ort.__version__}. Reproduce: "
            f"`python bench/ptq_vs_ort.py{' ' + flags if flags else ''}`.",
            f"Calibration: the first {a.calib_n} images of the calibration set (Fashion-MNIST *train*; mnist10k and photos224 have no",
            "split, so the first images of the same set). lowbit: default settings (per-channel int8 weights, uint8 activations,",
            "activation range method chosen automatically on the calibration images). ORT: quant_pre_process, then quantize_static",
            "QDQ, per-channel, the best of MinMax/Entropy/Percentile chosen on the evaluation set (which favours ORT).",
            "Both quantized files are scored in ONNX Runtime; lowbit's is also scored by lowbit's own executor.",
            "\"ORT by calibration KL\" is ORT's method with the lowest KL to float on the calibration images (the measure lowbit's",
            "`auto` uses among candidates it cannot tell apart by agreement).", "",
            "| model | metric | images | float | ORT best on test (method) | ORT by calibration KL (method) | lowbit (in ORT) | lowbit (in lowbit) |",
            "|---|---|---|---|---|---|---|---|"]
    for m, metric, n, f, o, om, lb, ls, ok, okm, *_ in rows:
        body.append(f"| {m} | {metric} | {n} | {f * 100:.2f}% | {o * 100:.2f}% ({om}) | {ok * 100:.2f}% ({okm}) | "
                    f"{lb * 100:.2f}% | {ls * 100:.2f}% |")
    body += ["", "Paired with ORT's best-on-test file, both run in ONNX Runtime: images only lowbit gets right, images only ORT",
             "gets right, and the exact McNemar p-value (the chance of a split at least this uneven if both were equally",
             "accurate). Top-1 agreement with float on the same images measures closeness to the float model directly.", "",
             "| model | only lowbit right | only ORT right | McNemar p | agreement with float: ORT best | lowbit |",
             "|---|---|---|---|---|---|"]
    for m, metric, n, f, o, om, lb, ls, ok, okm, only_lb, only_ort, (ag_o, ag_l) in rows:
        body.append(f"| {m} | {only_lb} | {only_ort} | {mcnemar_p(only_lb, only_ort):.2f} | {ag_o * 100:.2f}% | "
                    f"{ag_l * 100:.2f}% |")
    out = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(out).read() if os.path.exists(out) else "# lowbit benchmark results\n"
    title = a.title
    start = text.find(title)
    block = title + "\n\n" + "\n".join(body) + "\n\n"
    if start < 0:
        text = text.rstrip() + "\n\n" + block
    else:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + block + (text[end + 1:] if end >= 0 else "")
    open(out + ".tmp", "w").write(text)
    os.replace(out + ".tmp", out)
    print("wrote", out)


if __name__ == "__main__":
    main()
