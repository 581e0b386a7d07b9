#!/usr/bin/env python3
"""W8A8 quantization of real-world CNNs (detector, segmentation, face embedder): lowbit against
ONNX Runtime's quantize_static, judged by the task metric against the float model, in one run.

usage: python bench/realworld_quant.py [--models centerface,u2netp,sface] [--iters N]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)

For each model:
  1. `lowbit quantize` (per-channel int8 weights, uint8 activations, method auto) calibrated on
     ../shared/data/scenes (for the embedder: ../shared/data/faces aligned to 112x112 by
     bench/align_faces.py with CenterFace's landmarks).
  2. ONNX Runtime quantize_static on the same float model and the same preprocessed images
     (dumped by `lowbit dump-data`): QDQ, per-channel int8 weights, uint8 activations, MinMax and
     Percentile calibration; the better of the two by the task metric is reported.
  3. The task metric against float (`lowbit eval --task auto --reference FLOAT`): lowbit's file
     run by lowbit, ORT's file run by ORT (its outputs saved as .npy and read by `lowbit eval`).
  4. ORT runs lowbit's file: agreement of ORT and lowbit on it, by the same metric, with ORT's
     int8 kernels (graph optimizations on) and with its QDQ reference semantics (optimizations
     off: every DequantizeLinear/QuantizeLinear computed in float). On CPUs without VNNI, ORT's
     u8s8 kernels use vpmaddubsw, whose int16 pair sums saturate with full 8-bit weights (ORT
     documents `reduce_range` for this), so the two ORT figures differ there.
  5. Latency, batch 1, 1 thread, same run: lowbit fp32, lowbit int8 (its file), ORT int8 (its file).
  6. Segmentation: which images the data can resolve. The float model is run on each evaluation
     image with uniform noise of at most half a gray level added (the precision the 8-bit image
     itself has; a gray level per channel is the smallest step between the channel's values), SEEDS
     times; an image whose float mask then moves below the asked IoU against itself has a mask the
     image does not determine, and no quantized model can be held to it. Mean per-image IoU is
     reported over all images and over the resolvable ones, with the pooled IoU (all pixels).
Prints a table and writes bench/realworld_quant.json (or --out).
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from ort_qdq import Reader  # one image per calibration batch, as lowbit dumps them

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
LOWBIT = os.environ.get("LOWBIT_BIN", os.path.join(ROOT, "target", "release", "lowbit"))
SCENES = os.path.join(SHARED, "data", "scenes")
FACES = os.path.join(SHARED, "data", "faces")

# name: file, flags, calibration folder, evaluation folders, metric key, metric label
MODELS = {
    "centerface": ("det-centerface.onnx", ["--size", "640x480", "--scale", "1"], SCENES, [SCENES, FACES], "map50", "mAP@0.5"),
    "u2netp": ("seg-u2netp.onnx", ["--preset", "imagenet", "--size", "320x320"], SCENES, [SCENES], "iou", "mask IoU"),
    # faces aligned by bench/align_faces.py (CenterFace landmarks -> ArcFace template, 112x112)
    "sface": ("rec-sface-int8bq.onnx", ["--size", "112x112", "--scale", "1"], "ALIGNED", ["ALIGNED"], "cosine", "cosine"),
}


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def dump(folder, flags, prefix):
    run([LOWBIT, "dump-data", folder, *flags, "-o", prefix])
    meta = json.load(open(prefix + ".json"))
    return np.load(prefix + ".npy"), meta["stems"]


def float_model(src, shape, dst):
    """The float model with a fixed [1,3,H,W] input, initializers not listed as inputs, and block-wise
    DequantizeLinear of constant weights folded to float (what quantize_static needs)."""
    m = onnx.load(src)
    inits = {i.name: i for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        d.ClearField("dim_param")
        d.dim_value = v
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    nodes = []
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and all(i in inits for i in n.input if i):
            q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
            s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            z = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32) if len(n.input) > 2 and n.input[2] else np.zeros_like(s)
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
            if s.ndim == 0 or s.size == 1:
                w = (q - z.reshape(())) * s.reshape(())
            elif block:
                ax = axis % q.ndim
                s = np.repeat(s, block, axis=ax).take(range(q.shape[ax]), axis=ax)
                z = np.repeat(z, block, axis=ax).take(range(q.shape[ax]), axis=ax)
                w = (q - z) * s
            else:
                ax = axis % q.ndim
                sh = [1] * q.ndim
                sh[ax] = -1
                w = (q - z.reshape(sh)) * s.reshape(sh)
            t = numpy_helper.from_array(w.astype(np.float32), n.output[0])
            m.graph.initializer.append(t)
            continue
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    # Inputs that are initializers or node outputs, or that no node reads (old exporters list
    # weights as inputs too).
    made = {i.name for i in m.graph.initializer} | {o for n in m.graph.node for o in n.output}
    read = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.input if i.name not in made and i.name in read]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel QDQ (DequantizeLinear axis) needs opset 13
        m = onnx.version_converter.convert_version(m, 13)
    onnx.save(m, dst)


def session(path, optimize=True):
    o = ort.SessionOptions()
    if not optimize:  # the QDQ graph's own float arithmetic, node by node (ONNX's reference semantics)
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def save_ort_outputs(path, x, stems, out_dir, optimize=True):
    s = session(path, optimize)
    names = [o.name for o in s.get_outputs()]
    inp = s.get_inputs()[0].name
    for i, stem in enumerate(stems):
        outs = s.run(None, {inp: x[i : i + 1]})
        d = os.path.join(out_dir, stem)
        os.makedirs(d, exist_ok=True)
        for n, v in zip(names, outs):
            np.save(os.path.join(d, n.replace("/", "_").replace(":", "_") + ".npy"), v.astype(np.float32))


def ort_latency(path, x, iters):
    s = session(path)
    feed = {s.get_inputs()[0].name: x[:1]}
    for _ in range(3):
        s.run(None, feed)
    t = []
    for _ in range(iters):
        a = time.perf_counter()
        s.run(None, feed)
        t.append((time.perf_counter() - a) * 1e3)
    return float(np.median(t))


def lowbit_latency(path, shape, iters):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        run([LOWBIT, "bench", path, "--input-shape", ",".join(map(str, shape)), "--iters", str(iters), "--warmup", "3", "--json", f.name])
        return json.load(open(f.name))["median_ms"]


def metric(model, ref, data, flags, key, out_json):
    run([LOWBIT, "eval", model, "--data", data, "--reference", ref, *flags, "--json", out_json])
    return json.load(open(out_json))["metric"][key]


SEEDS = 4
RESOLVE_IOU = 0.97  # issue 19's mask IoU bar


def float_self_iou(flt, x):
    """Per image: the lowest IoU of the float mask (first output > 0.5) against itself with the input
    perturbed by uniform noise of at most half a gray level, over SEEDS draws."""
    s = session(flt)
    inp = s.get_inputs()[0].name
    # A gray level per channel: the smallest gap between distinct values of the channel.
    level = []
    for c in range(x.shape[1]):
        v = np.unique(x[:, c])
        level.append(float(np.diff(v).min()) if len(v) > 1 else 0.0)
    half = (np.array(level, dtype=np.float32) / 2).reshape(1, -1, 1, 1)
    worst = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        ref = s.run(None, {inp: xi})[0] > 0.5
        lo = 1.0
        for seed in range(SEEDS):
            rng = np.random.default_rng(seed * 1000 + i)
            o = s.run(None, {inp: (xi + rng.uniform(-1, 1, xi.shape).astype(np.float32) * half).astype(np.float32)})[0] > 0.5
            u = (ref | o).sum()
            lo = min(lo, 1.0 if u == 0 else float((ref & o).sum() / u))
        worst.append(lo)
    return worst, level


def per_image(out_json):
    return [r["iou"] for r in json.load(open(out_json))["metric"]["per_image"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--quantize-flags", default="", help="extra `lowbit quantize` flags, e.g. '--method mse'")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "realworld_quant.json"))
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    results = {"cpu": cpu, "isa": os.environ.get("LOWBIT_ISA", "auto"), "onnxruntime": ort.__version__, "models": {}}
    tmp = tempfile.mkdtemp(prefix="lowbit-rwq-")
    aligned = os.path.join(tmp, "faces-aligned")
    for name in args.models.split(","):
        file, flags, calib, evals, key, label = MODELS[name]
        if "ALIGNED" in [calib] + evals:
            if not os.path.isdir(aligned):
                run([sys.executable, os.path.join(ROOT, "bench", "align_faces.py"), FACES, aligned])
            calib, evals = aligned, [aligned]
        src = os.path.join(SHARED, "zoo", file)
        work = os.path.join(tmp, name)
        os.makedirs(work)
        # Evaluation images: every evaluation folder, as links in one folder.
        data = os.path.join(work, "eval")
        os.makedirs(data)
        for f in evals:
            for img in sorted(os.listdir(f)):
                if img.lower().endswith((".jpg", ".png", ".jpeg")):
                    os.symlink(os.path.join(f, img), os.path.join(data, img))
        xc, _ = dump(calib, flags, os.path.join(work, "calib"))
        xe, stems = dump(data, flags, os.path.join(work, "evaldata"))
        shape = [1] + list(xe.shape[1:])
        flt = os.path.join(work, "float.onnx")
        float_model(src, shape, flt)
        # lowbit
        lb = os.path.join(work, "lowbit.onnx")
        t0 = time.time()
        run([LOWBIT, "quantize", src, "--calib", calib, *flags, *args.quantize_flags.split(), "-o", lb, "--json", os.path.join(work, "lowbit-q.json")])
        lb_secs = time.time() - t0
        lb_metric = metric(lb, src, data, flags, key, os.path.join(work, "lb.json"))
        # ONNX Runtime: MinMax and Percentile, the better one kept
        inp = session(flt).get_inputs()[0].name
        best = None
        for cm in [CalibrationMethod.MinMax, CalibrationMethod.Percentile]:
            q = os.path.join(work, f"ort-{cm.name}.onnx")
            quantize_static(flt, q, Reader(inp, xc), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm)
            od = os.path.join(work, f"ort-{cm.name}-out")
            save_ort_outputs(q, xe, stems, od)
            m = metric(od, src, data, flags, key, os.path.join(work, f"ort-{cm.name}.json"))
            od = os.path.join(work, f"ort-{cm.name}-out-ref")
            save_ort_outputs(q, xe, stems, od, optimize=False)
            mr = metric(od, src, data, flags, key, os.path.join(work, f"ort-{cm.name}-ref.json"))
            if best is None or max(m, mr) > max(best[1], best[3]):
                best = (cm.name, m, q, mr)
        # ORT runs lowbit's file; agreement with lowbit running it
        od = os.path.join(work, "lowbit-by-ort")
        save_ort_outputs(lb, xe, stems, od)
        agree = metric(lb, od, data, flags, key, os.path.join(work, "agree.json"))
        od = os.path.join(work, "lowbit-by-ort-ref")
        save_ort_outputs(lb, xe, stems, od, optimize=False)
        agree_ref = metric(lb, od, data, flags, key, os.path.join(work, "agree-ref.json"))
        lat = {
            "lowbit_fp32_ms": lowbit_latency(flt, shape, args.iters),
            "lowbit_int8_ms": lowbit_latency(lb, shape, args.iters),
            "ort_int8_ms": ort_latency(best[2], xe, args.iters),
            "ort_fp32_ms": ort_latency(flt, xe, args.iters),
        }
        results["models"][name] = {"metric": label, "input": shape, "lowbit": lb_metric, "ort": best[1], "ort_calibration": best[0],
                                   "ort_qdq_semantics": best[3], "ort_runs_lowbit_file_agreement": agree,
                                   "ort_qdq_semantics_lowbit_file_agreement": agree_ref, "lowbit_quantize_seconds": lb_secs, **lat}
        if key == "iou":
            r = results["models"][name]
            pooled = lambda j: json.load(open(os.path.join(work, j)))["metric"]["pooled_iou"]
            best_json = f"ort-{best[0]}.json"
            r["pooled_iou"] = {"lowbit": pooled("lb.json"), "ort": pooled(best_json), "ort_qdq_semantics": pooled(best_json.replace(".json", "-ref.json")),
                               "ort_runs_lowbit_file_agreement": pooled("agree.json"), "ort_qdq_semantics_lowbit_file_agreement": pooled("agree-ref.json")}
            self_iou, level = float_self_iou(flt, xe)
            ok = [i for i, v in enumerate(self_iou) if v >= RESOLVE_IOU]
            lbi, orti, orri = per_image(os.path.join(work, "lb.json")), per_image(os.path.join(work, best_json)), per_image(os.path.join(work, best_json.replace(".json", "-ref.json")))
            r["resolution"] = {"seeds": SEEDS, "gray_level": level, "bar": RESOLVE_IOU, "images": stems,
                               "float_self_iou_worst": self_iou, "float_self_iou_mean": float(np.mean(self_iou)),
                               "resolvable": [stems[i] for i in ok],
                               "lowbit_per_image": lbi, "ort_per_image": orti, "ort_qdq_semantics_per_image": orri,
                               "lowbit_mean_resolvable": float(np.mean([lbi[i] for i in ok])) if ok else None,
                               "ort_mean_resolvable": float(np.mean([orti[i] for i in ok])) if ok else None,
                               "ort_qdq_semantics_mean_resolvable": float(np.mean([orri[i] for i in ok])) if ok else None}
            for tag, j in [("ort_runs_lowbit_file_agreement", "agree.json"), ("ort_qdq_semantics_lowbit_file_agreement", "agree-ref.json")]:
                a = per_image(os.path.join(work, j))
                r["resolution"][tag + "_per_image"] = a
                r["resolution"][tag + "_mean_resolvable"] = float(np.mean([a[i] for i in ok])) if ok else None
        print(name, json.dumps(results["models"][name]), flush=True)
    print(f"\nCPU {cpu}, lowbit path LOWBIT_ISA={results['isa']}, onnxruntime {ort.__version__}, batch 1, 1 thread")
    hdr = ["model", "metric vs float", "lowbit W8A8", "ORT quantize_static (ORT int8 kernels / QDQ semantics)",
           "ORT runs lowbit file: agreement (int8 kernels / QDQ semantics)",
           "lowbit fp32 ms", "lowbit int8 ms", "ORT int8 ms", "ORT fp32 ms"]
    print(" | ".join(hdr))
    for n, r in results["models"].items():
        print(" | ".join([f"{n} {r['input']}", r["metric"], f"{r['lowbit']:.4f}", f"{r['ort']:.4f} / {r['ort_qdq_semantics']:.4f} ({r['ort_calibration']})",
                          f"{r['ort_runs_lowbit_file_agreement']:.4f} / {r['ort_qdq_semantics_lowbit_file_agreement']:.4f}", f"{r['lowbit_fp32_ms']:.1f}", f"{r['lowbit_int8_ms']:.1f}",
                          f"{r['ort_int8_ms']:.1f}", f"{r['ort_fp32_ms']:.1f}"]))
    for n, r in results["models"].items():
        if "resolution" in r:
            z, p = r["resolution"], r["pooled_iou"]
            print(f"{n}: pooled IoU lowbit {p['lowbit']:.4f}, ORT {p['ort']:.4f} / {p['ort_qdq_semantics']:.4f}; float against itself at half a gray level "
                  f"(worst of {z['seeds']}): mean per image {z['float_self_iou_mean']:.4f}; {len(z['resolvable'])} of {len(z['images'])} images resolvable at {z['bar']}: "
                  f"mean per image lowbit {z['lowbit_mean_resolvable']:.4f}, ORT {z['ort_mean_resolvable']:.4f} / {z['ort_qdq_semantics_mean_resolvable']:.4f}; "
                  f"ORT runs lowbit's file: agreement {z['ort_runs_lowbit_file_agreement_mean_resolvable']:.4f} / {z['ort_qdq_semantics_lowbit_file_agreement_mean_resolvable']:.4f} "
                  f"(pooled {p['ort_runs_lowbit_file_agreement']:.4f} / {p['ort_qdq_semantics_lowbit_file_agreement']:.4f})")
    json.dump(results, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
