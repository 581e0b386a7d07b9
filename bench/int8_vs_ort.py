#!/usr/bin/env python3
"""lowbit int8 vs ONNX Runtime int8 and fp32, in one run.

usage: python bench/int8_vs_ort.py [--iters N] [--rounds R] [--models a,b]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)

The QDQ files are ONNX Runtime's own (quantize_static, QDQ, per-channel int8 weights, uint8
activations: its fastest x86 configuration), written by bench/ort_qdq.py. lowbit runs the same files
with LOWBIT_ISA=avx512vnni (and the other paths this CPU has, for the table). Every configuration is
measured in alternating rounds in the same run (the machines are shared and noisy); the table shows
the median over rounds of per-round median latencies. Written to bench/RESULTS.md
(section "int8 vs ONNX Runtime").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_ort import cpu_model, replace_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "..", "shared", "zoo")
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")


def ort_median(path, threads, batch, iters, warmup=5, shape=None):
    """Median ms of ONNX Runtime on `path` (input `shape`, else the file's with `batch` and 1 for
    symbolic dimensions)."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = shape or [batch] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(warmup):
        s.run(None, {i.name: x})
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        s.run(None, {i.name: x})
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def lowbit_run(path, threads, batch, iters, isa):
    env = dict(os.environ, LOWBIT_ISA=isa)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([LOWBIT, "bench", path, "--threads", str(threads), "--batch", str(batch), "--iters", str(iters),
                        "--warmup", "5", "--json", f.name], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env)
        return json.load(open(f.name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="resnet18-random,mobilenetv2-imagenet,efficientnet-lite0-imagenet")
    a = ap.parse_args()
    if not os.path.exists(LOWBIT):
        sys.exit(f"{LOWBIT} not found: run `cargo build --release` first")
    tmp = tempfile.mkdtemp(prefix="lowbit-int8-bench-")
    models = a.models.split(",")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ort_qdq.py"), tmp, "--models", ",".join(models)], check=True,
                   stdout=subprocess.DEVNULL)
    feats = subprocess.run([LOWBIT, "inspect", os.path.join(ZOO, "mnist-cnn.onnx")], capture_output=True, text=True).stdout
    cpu_line = next((ln.split(None, 1)[1] for ln in feats.splitlines() if ln.startswith("cpu")), "?")
    # The best path this CPU has first (measured every round), then AVX-512 VNNI every round too (the
    # acceptance names it), then the slow paths once.
    # On CPUs without AVX-512 (AMD Zen 3, Intel client cores) the best path is AVX2.
    have = {"amx": "amx-int8" in cpu_line, "avx512vnni": "avx512vnni" in cpu_line, "avx2": "avx2" in cpu_line,
            "scalar": True}
    isas = [i for i in ["amx", "avx512vnni", "avx2", "scalar"] if have[i]]
    best = isas[0]
    every_round = {best} | ({"avx512vnni"} if have["avx512vnni"] else set())
    rows = []
    for m in models:
        fp32 = os.path.join(ZOO, m + ".onnx")
        qdq = os.path.join(tmp, m + "-ort-qdq.onnx")
        for threads, batch in ((1, 1), (2, 1), (1, 8)):
            res = {k: [] for k in ["ort_fp32", "ort_int8", "lowbit_fp32"] + isas}
            extra = {}
            for r in range(a.rounds):
                res["ort_fp32"].append(ort_median(fp32, threads, batch, a.iters))
                res["ort_int8"].append(ort_median(qdq, threads, batch, a.iters))
                res["lowbit_fp32"].append(lowbit_run(fp32, threads, batch, a.iters, best)["median_ms"])
                for isa in isas:
                    # the slow paths once per configuration, batch 1 only
                    if isa not in every_round and (r > 0 or batch > 1 or threads > 1):
                        continue
                    j = lowbit_run(qdq, threads, batch, a.iters if isa in every_round else 3, isa)
                    res[isa].append(j["median_ms"])
                    if isa == best:
                        extra = j
            med = {k: float(np.median(v)) if v else None for k, v in res.items()}
            med.setdefault("avx512vnni", None)
            vnni = med["avx512vnni"]
            rows.append((m, threads, batch, med, extra))
            lb = med[best]
            print(f"{m:28} T{threads} B{batch}: lowbit int8 ({best}) {lb:7.2f} ms ({extra['gmac_per_s']:.0f} GMAC/s, "
                  f"{100 * extra['gmac_per_s'] / extra['peak_gmac_per_s']:.0f}% of peak)  ORT int8 {med['ort_int8']:7.2f}  "
                  f"ORT fp32 {med['ort_fp32']:7.2f}  lowbit fp32 {med['lowbit_fp32']:7.2f}  -> ORT int8 / lowbit int8 = "
                  f"{med['ort_int8'] / lb:.2f}" + (f"; avx512vnni {vnni:.2f} ms -> {med['ort_int8'] / vnni:.2f}" if vnni else ""),
                  flush=True)
    body = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores; features: {cpu_line}),",
            f"ONNX Runtime {ort.__version__} (CPU EP, graph optimizations ALL). The QDQ files are ONNX Runtime's own",
            "quantize_static output (QDQ, per-channel int8 weights, uint8 activations, MinMax). Median latency per round,",
            f"median over {a.rounds} alternating rounds of {a.iters} runs. Reproduce: `python bench/int8_vs_ort.py`.",
            "Speed-up = ORT int8 ms / lowbit int8 ms (higher is better). GMAC/s share: of this core's measured",
            f"{best} peak (`cargo bench -p lowbit-kernels --bench int8` prints it). avx512vnni: every round too;",
            "scalar/avx2: lowbit forced onto that path with LOWBIT_ISA (batch 1, one round).", "",
            f"| model | threads | batch | lowbit int8 ms ({best}) | GMAC/s (share of peak) | ORT int8 ms | speed-up vs ORT int8 "
            "| lowbit avx512vnni ms | speed-up (avx512vnni) | ORT fp32 ms | lowbit fp32 ms | lowbit avx2 ms | lowbit scalar ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, t, b, med, j in rows:
        f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        body.append(f"| {m} | {t} | {b} | {med[best]:.2f} | {j['gmac_per_s']:.0f} "
                    f"({100 * j['gmac_per_s'] / j['peak_gmac_per_s']:.0f}%) | {med['ort_int8']:.2f} | "
                    f"{med['ort_int8'] / med[best]:.2f} | {f(med['avx512vnni'])} | "
                    f"{f(med['ort_int8'] / med['avx512vnni'] if med['avx512vnni'] else None)} | "
                    f"{med['ort_fp32']:.2f} | {med['lowbit_fp32']:.2f} | "
                    f"{f(med['avx2'])} | {f(med['scalar'])} |")
    scal = [(m, med) for m, t, b, med, _ in rows if b == 1]
    by = {}
    for m, t, b, med, _ in rows:
        if b == 1:
            by.setdefault(m, {})[t] = med[best]
    body.append("")
    for m, d in by.items():
        if 1 in d and 2 in d:
            body.append(f"- {m}: 2 threads give {d[1] / d[2]:.2f}x the 1-thread throughput (int8, batch 1).")
    del scal
    out = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(out).read() if os.path.exists(out) else ""
    text = replace_section(text, "## int8 vs ONNX Runtime", "\n".join(body))
    open(out + ".tmp", "w").write(text)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
