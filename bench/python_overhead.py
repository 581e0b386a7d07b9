#!/usr/bin/env python3
"""What the Python package costs over the `lowbit` binary (issue 25, line 4), in one run:

1. batch-1 latency of an int8 ResNet-18 through `lowbit.Model.run` (numpy in, numpy out) against
   `lowbit bench` on the same file, threads and CPU, in alternating rounds (this machine drifts);
2. throughput of two Python threads sharing one `Model(threads=1)` against one Python thread, and
   against `lowbit bench --threads 2` (the runtime's own two-thread figure): the GIL is released
   while a model runs, so two threads should get close to twice one.

The int8 file is lowbit's W8A8 of the zoo's ResNet-18 (calibrated on 16 photos, min-max; the weights
do not matter for speed). Run after `./scripts/test.sh` (which installs the wheel into ./venv):

    venv/bin/python bench/python_overhead.py [--rounds 3] [--iters 200] [--json bench/python_overhead.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import lowbit

ROOT = Path(__file__).resolve().parents[1]
LOWBIT = Path(os.environ.get("LOWBIT_BIN", ROOT / "target" / "release" / "lowbit"))
ZOO = ROOT.parent / "shared" / "zoo"
PHOTOS = ROOT.parent / "shared" / "data" / "photos224"


def cli_bench(model: Path, iters: int, threads: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(
            [str(LOWBIT), "bench", str(model), "--iters", str(iters), "--warmup", "20", "--threads", str(threads),
             "--json", f.name, "--force"],
            check=True, capture_output=True)
        return json.loads(Path(f.name).read_text())


def py_latency(m: lowbit.Model, x: np.ndarray, iters: int) -> float:
    for _ in range(20):
        m.run(x)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        m.run(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def py_throughput(m: lowbit.Model, x: np.ndarray, threads: int, seconds: float) -> float:
    """Images per second of `threads` Python threads calling `m.run` for `seconds`."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(k):
        while time.perf_counter() < stop:
            m.run(x)
            counts[k] += 1

    for _ in range(5):
        m.run(x)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    cpu = lowbit.cpu()
    work = Path(tempfile.mkdtemp(prefix="lowbit-pyover-"))
    model = work / "resnet18-w8a8.onnx"
    subprocess.run([str(LOWBIT), "quantize", str(ZOO / "resnet18-random.onnx"), "--calib", str(PHOTOS), "--calib-n",
                    "16", "--method", "minmax", "--preset", "imagenet", "-o", str(model)], check=True,
                   capture_output=True)
    m = lowbit.Model(model, threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    for r in range(a.rounds):
        c1 = cli_bench(model, a.iters, 1)["median_ms"]
        p1 = py_latency(m, x, a.iters)
        c2 = cli_bench(model, a.iters, 2)["images_per_s"]
        t1 = py_throughput(m, x, 1, a.seconds)
        t2 = py_throughput(m, x, 2, a.seconds)
        rows.append({"round": r + 1, "cli_ms": c1, "python_ms": p1, "overhead_pct": (p1 / c1 - 1) * 100,
                     "py_1thread_ips": t1, "py_2threads_ips": t2, "cli_2threads_ips": c2})
        print(f"round {r + 1}: lowbit bench {c1:.3f} ms, Model.run {p1:.3f} ms ({(p1 / c1 - 1) * 100:+.2f}%); "
              f"Python 1 thread {t1:.1f}/s, 2 threads {t2:.1f}/s ({t2 / t1:.2f}x), lowbit bench --threads 2 {c2:.1f}/s")
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    summary = {
        "cpu": cpu["model_name"], "int8_path": cpu["paths"]["int8"], "features": cpu["features"],
        "model": "zoo resnet18-random.onnx, lowbit W8A8 (min-max, 16 photos)", "batch": 1, "rounds": rows,
        "median_overhead_pct": med("overhead_pct"), "median_cli_ms": med("cli_ms"), "median_python_ms": med("python_ms"),
        "median_2threads_over_1": statistics.median(r["py_2threads_ips"] / r["py_1thread_ips"] for r in rows),
        "median_2threads_over_cli_2threads": statistics.median(r["py_2threads_ips"] / r["cli_2threads_ips"] for r in rows),
    }
    print(f"\nCPU {summary['cpu']}, int8 path {summary['int8_path']}; ResNet-18 W8A8 batch 1, medians of "
          f"{a.rounds} rounds:")
    print("| lowbit bench 1T ms | Model.run 1T ms | overhead | 2 Python threads / 1 | 2 Python threads / lowbit bench 2T |")
    print("|---|---|---|---|---|")
    print(f"| {summary['median_cli_ms']:.3f} | {summary['median_python_ms']:.3f} | {summary['median_overhead_pct']:+.2f}% "
          f"| {summary['median_2threads_over_1']:.2f}x | {summary['median_2threads_over_cli_2threads']:.2f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
