#!/usr/bin/env python3
"""lowbit int8 vs ONNX Runtime int8 as both would run on CPUs without AVX-512, measured on this one.

usage: python bench/masked_cpu_vs_ort.py [--masks avx2,avxvnni] [--rounds R] [--iters N]
                                         [--model FILE:SHAPE ...] [--out FILE.json]
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh; needs gcc
and a CPU or hypervisor with CPUID faulting: `cpuid_fault` in /proc/cpuinfo)

bench/cpuid_mask.c (an LD_PRELOAD shim) hides AVX-512 and AMX from `cpuid` -- and AVX-VNNI too for
`avx2` -- so that ONNX Runtime's MLAS and lowbit's run-time detection both pick the kernels they
would pick on an AVX2-only CPU (AMD Zen 2/3, Intel before Ice Lake) or an Intel client core with
AVX-VNNI. lowbit's choice is checked from its own report ("integer avx2"). What this measures is
each program's code for that CPU on this core (same instructions, this core's ports and caches),
not the other CPU: a ratio, not a latency to quote for that CPU.

Default models: ONNX Runtime's own QDQ files of ResNet-18, MobileNetV2 and EfficientNet-Lite0
(bench/ort_qdq.py, as in bench/int8_vs_ort.py), batch 1, 1 thread, alternating rounds in one run.
`--model FILE:SHAPE` adds QDQ files (e.g. CenterFace's from bench/realworld_quant.py,
`.../ort-MinMax.onnx:1x3x480x640`); lowbit runs the same file.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.path.join(ROOT, "target", "release", "lowbit")
DEFAULT = ["resnet18-random", "mobilenetv2-imagenet", "efficientnet-lite0-imagenet"]


def ort_worker(path, shape, iters):
    # Imported here: the worker runs under the shim, the parent needs no onnxruntime.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from int8_vs_ort import ort_median
    print(json.dumps({"median_ms": ort_median(path, 1, shape[0], iters, shape=shape)}))


def masked_env(shim, mask):
    return dict(os.environ, LD_PRELOAD=shim, CPUID_MASK=mask)


def ort_ms(shim, mask, path, shape, iters):
    r = subprocess.run([sys.executable, __file__, "--worker", path, "x".join(map(str, shape)), str(iters)],
                       env=masked_env(shim, mask), capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["median_ms"]


def lowbit_ms(shim, mask, path, shape, iters):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        r = subprocess.run([LOWBIT, "bench", path, "--input-shape", ",".join(map(str, shape)), "--threads", "1",
                            "--iters", str(iters), "--warmup", "5", "--json", f.name],
                           env=masked_env(shim, mask), capture_output=True, text=True, check=True)
        j = json.load(open(f.name))
    want = "integer avx2" if mask == "avx2" else "integer avxvnni"
    if want not in r.stdout:
        sys.exit(f"lowbit did not pick {want} under CPUID_MASK={mask}: {r.stdout.strip().splitlines()[-1]}")
    return j["median_ms"]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        ort_worker(sys.argv[2], [int(v) for v in sys.argv[3].split("x")], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--masks", default="avx2,avxvnni")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--model", action="append", default=[], help="QDQ FILE:SHAPE (e.g. 1x3x480x640)")
    ap.add_argument("--default-models", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not os.path.exists(LOWBIT):
        sys.exit(f"{LOWBIT} not found: run `cargo build --release` first")
    if "cpuid_fault" not in open("/proc/cpuinfo").read():
        sys.exit("this CPU offers no CPUID faulting (cpuid_fault), so the shim cannot hide features")
    tmp = tempfile.mkdtemp(prefix="lowbit-masked-")
    shim = os.path.join(tmp, "cpuid_mask.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", shim, os.path.join(ROOT, "bench", "cpuid_mask.c")], check=True)
    models = []
    if a.default_models:
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ort_qdq.py"), tmp, "--models", ",".join(DEFAULT)],
                       check=True, stdout=subprocess.DEVNULL)
        models += [(m, os.path.join(tmp, m + "-ort-qdq.onnx"), [1, 3, 224, 224]) for m in DEFAULT]
    for spec in a.model:
        path, shape = spec.rsplit(":", 1)
        # The folder and the file (bench/realworld_quant.py leaves several files of one model in its folder).
        name = os.path.join(os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0])
        models.append((name, path, [int(v) for v in shape.split("x")]))
    rows = []
    for mask in a.masks.split(","):
        for name, path, shape in models:
            lb, ot = [], []
            for _ in range(a.rounds):
                lb.append(lowbit_ms(shim, mask, path, shape, a.iters))
                ot.append(ort_ms(shim, mask, path, shape, a.iters))
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            row = {"mask": mask, "model": name, "lowbit_ms": med(lb), "ort_ms": med(ot), "ratio": med(ot) / med(lb),
                   "lowbit_rounds": lb, "ort_rounds": ot}
            rows.append(row)
            print(f"{mask:8} {name:32} lowbit int8 {row['lowbit_ms']:8.3f} ms  ORT int8 {row['ort_ms']:8.3f} ms  "
                  f"ratio {row['ratio']:.2f}", flush=True)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
