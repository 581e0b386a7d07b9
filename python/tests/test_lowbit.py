"""The Python package against the command line it wraps (issue 25): numpy in and out, outputs equal
to `lowbit run` bit for bit (float and int8), quantization from a Python generator writing the same
file as `lowbit quantize --calib`, errors as exceptions, and one model run from two Python threads.

Needs the `lowbit` binary (LOWBIT_BIN, default target/release/lowbit), the shared zoo beside the
repository and Fashion-MNIST (`apt-get install dataset-fashion-mnist`); ./scripts/test.sh sets all
three up. Nothing is skipped: missing data fails with what to install.
"""

import gzip
import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import lowbit

ROOT = Path(__file__).resolve().parents[2]
LOWBIT = Path(os.environ.get("LOWBIT_BIN", ROOT / "target" / "release" / "lowbit"))
ZOO = ROOT.parent / "shared" / "zoo"
DATA = ROOT.parent / "shared" / "data"
REPRO = ROOT.parent / "shared" / "repro"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT = ROOT / "assets" / "fmnist-default.onnx"


def need(p: Path, how: str) -> Path:
    assert p.exists(), f"{p} is missing: {how}"
    return p


def cli(*args) -> subprocess.CompletedProcess:
    exe = need(LOWBIT, "build it with `cargo build --release` or set LOWBIT_BIN")
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"lowbit {' '.join(map(str, args))} failed:\n{r.stderr}"
    return r


def load_npy_dump(prefix: Path):
    """`lowbit dump-data -o PREFIX`: the preprocessed images and the per-image output folder names."""
    x = np.load(f"{prefix}.npy")
    meta = json.loads(Path(f"{prefix}.json").read_text())
    return x, meta["stems"]


def saved_outputs(d: Path, stems, names):
    return [[np.load(d / s / f"{n}.npy") for n in names] for s in stems]


def fmnist_train_images(n: int):
    """A user's own loader: the raw IDX file read with numpy and normalised as the model was trained
    (Fashion-MNIST mean 0.2860, std 0.3530 on pixels / 255), one float32 image (1, 28, 28) at a time."""
    f = need(FMNIST / "train-images-idx3-ubyte.gz", "apt-get install -y dataset-fashion-mnist")
    raw = gzip.decompress(f.read_bytes())
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(count, 1, rows, cols)
    scale, mean, std = np.float32(1.0) / np.float32(255.0), np.float32(0.2860), np.float32(0.3530)
    for i in range(n):
        yield (pixels[i].astype(np.float32) * scale - mean) / std


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("lowbit-py")


def test_numpy_round_trip():
    m = lowbit.Model.load(DEFAULT)
    assert m.input_names == ["input"] and m.output_names == ["logits"] and m.input_dtypes == ["float32"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    (y,) = m.run(x)
    assert y.shape == (3, 10) and y.dtype == np.float32 and np.isfinite(y).all()
    # One array, a list and a dict by name are the same call.
    for other in (m.run([x]), m.run({"input": x}), m(x)):
        assert bits_equal(other[0], y)
    # Batch 3 gives each image's batch-1 result (to rounding: the float kernels block a batch of 3
    # differently from one image); each shape compiles once.
    for i in range(3):
        np.testing.assert_allclose(m.run(x[i : i + 1])[0], y[i : i + 1], rtol=1e-5, atol=1e-5)
    assert m.plans_compiled == 2
    # float64 and non-contiguous arrays are converted to the input's float32, C order.
    assert bits_equal(m.run(x.astype(np.float64))[0], y)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags["C_CONTIGUOUS"] and bits_equal(m.run(xt)[0], y)
    # The model's input may be any size of its rank (the declared batch is not fixed).
    assert m.input_shapes == [[None, 1, 28, 28]]


@pytest.mark.parametrize("which", ["fmnist", "mobilenetv2"])
def test_outputs_equal_the_cli_float_and_int8(tmp, which):
    """`Model.run` on the images `lowbit dump-data` preprocessed gives `lowbit run --save-outputs`'s
    outputs bit for bit, for the float model and its W8A8 file on the integer kernels."""
    if which == "fmnist":
        model, data = DEFAULT, need(FMNIST, "apt-get install -y dataset-fashion-mnist")
        pre = ["--preset", "fmnist", "--limit", "6"]
        q = ["--calib-n", "64"]
    else:
        model, data = need(ZOO / "mobilenetv2-imagenet.onnx", "the shared zoo"), DATA / "photos224"
        pre = ["--preset", "imagenet", "--limit", "3"]
        q = ["--calib-n", "8", "--method", "minmax"]
    w8 = tmp / f"{which}-w8a8.onnx"
    cli("quantize", model, "--calib", data, *q, "--preset", pre[1], "-o", w8)
    prefix = tmp / f"{which}-images"
    cli("dump-data", data, *pre, "-o", prefix)
    x, stems = load_npy_dump(prefix)
    for path in (model, w8):
        out = tmp / f"{which}-{path.stem}-outs"
        cli("run", path, "--input", data, *pre, "--save-outputs", out)
        m = lowbit.Model(path)
        want = saved_outputs(out, stems, m.output_names)
        assert len(want) == len(x) >= 3
        for i in range(len(x)):
            got = m.run(x[i : i + 1])
            assert len(got) == len(want[i])
            for g, w in zip(got, want[i]):
                assert bits_equal(g, w), f"{path.name} image {i}: max diff {np.abs(g - w).max()}"
    info = lowbit.inspect(w8)
    assert any("int8" in l["kernel"] or "vnni" in l["kernel"] or "q" in l["op"].lower() for l in info["layers"])


def test_quantize_from_a_generator_writes_the_clis_file(tmp):
    """500 Fashion-MNIST training images from a Python generator give the same QDQ file (byte for
    byte) as `lowbit quantize --calib` on the IDX folder, and the same report."""
    model = need(ZOO / "fmnist-resnet.onnx", "the shared zoo")
    data = need(FMNIST, "apt-get install -y dataset-fashion-mnist")
    cli_out, cli_json = tmp / "cli-w8a8.onnx", tmp / "cli-w8a8.json"
    cli("quantize", model, "--calib", data, "--calib-n", "500", "-o", cli_out, "--json", cli_json)
    # The generator's preprocessing is the preset's, to the bit.
    prefix = tmp / "fmnist-train-500"
    cli("dump-data", data, "--preset", "fmnist", "--split", "train", "--limit", "500", "-o", prefix)
    dumped, _ = load_npy_dump(prefix)
    assert bits_equal(np.stack(list(fmnist_train_images(500))), dumped)

    py_out, py_json = tmp / "py-w8a8.onnx", tmp / "py-w8a8.json"
    rep = lowbit.quantize(model, fmnist_train_images(10_000), py_out, calib_n=500, json=py_json)
    assert py_out.read_bytes() == cli_out.read_bytes()
    c = json.loads(cli_json.read_text())
    assert rep.json == json.loads(py_json.read_text())
    assert rep.calibration_images == 500 == c["calibration_images"]
    for k in ("method", "method_candidates", "layers", "quant_weight_bytes", "float_weight_bytes", "bias_correction"):
        assert rep.json[k] == c[k], k
    assert rep.layers and all(l.weight_bits == 8 and l.act_bits == 8 for l in rep.layers)
    assert rep.method == c["method"] and "W8A8" in rep.table()


def test_quantize_batches_labels_and_evaluate(tmp):
    """Batches and (images, labels) pairs are accepted; W4A8 runs; evaluate from arrays with labels
    equals evaluate from the IDX path."""
    x = np.stack(list(fmnist_train_images(64)))
    # Tuples and the [images, labels] lists a PyTorch DataLoader yields.
    batches = ((x[i : i + 16], np.arange(i, i + 16) % 10) if i % 32 else [x[i : i + 16], np.arange(i, i + 16) % 10]
               for i in range(0, 64, 16))
    out = tmp / "w4a8.onnx"
    rep = lowbit.quantize(DEFAULT, batches, out, weights=4, method="minmax")
    assert rep.weight_bits == 4 and rep.calibration_images == 64 and out.exists()
    assert rep.quant_weight_bytes < rep.float_weight_bytes / 6

    ev_path = lowbit.evaluate(out, FMNIST, preset="fmnist", limit=200, reference=DEFAULT)
    test_x, _ = _dump(tmp, "fmnist-test-200", FMNIST, "--preset", "fmnist", "--limit", "200")
    labels = _idx_labels(FMNIST / "t10k-labels-idx1-ubyte.gz")[:200]
    ev_arr = lowbit.evaluate(out, test_x, labels=labels, reference=DEFAULT)
    assert ev_arr["images"] == ev_path["images"] == 200
    assert ev_arr["top1"] == ev_path["top1"] and ev_arr["agreement"] == ev_path["agreement"]
    assert 0.5 < ev_arr["top1"] <= 1.0


def test_quantize_adaround(tmp):
    """rounding="adaround" re-rounds every quantized layer, never with a larger output error, and
    reports it; the file runs."""
    x = np.stack(list(fmnist_train_images(64)))
    out = tmp / "w4a8-adaround.onnx"
    rep = lowbit.quantize(DEFAULT, x, out, weights=4, method="mse", rounding="adaround", adaround_iters=50)
    layers = rep.json["adaround_layers"]
    assert rep.json["rounding"] == "adaround" and len(layers) == len(rep.layers) > 0
    assert all(l["rel_err_adaround"] <= l["rel_err_nearest"] * 1.0001 + 1e-9 for l in layers)
    y = lowbit.Model(out).run(x[:4])
    assert y[0].shape == (4, 10)
    with pytest.raises(lowbit.LowbitError):
        lowbit.quantize(DEFAULT, x, tmp / "bad.onnx", rounding="adaround", scheme="kmeans")


def _dump(tmp, name, data, *args):
    prefix = tmp / name
    cli("dump-data", data, *args, "-o", prefix)
    return load_npy_dump(prefix)


def _idx_labels(p: Path) -> np.ndarray:
    return np.frombuffer(gzip.decompress(p.read_bytes()), np.uint8, offset=8).astype(np.int64)


def test_errors_are_exceptions_with_the_clis_message(tmp):
    with pytest.raises(lowbit.LowbitError, match="nope.onnx"):
        lowbit.Model(tmp / "nope.onnx")
    bad = tmp / "truncated.onnx"
    bad.write_bytes(DEFAULT.read_bytes()[:1000])
    with pytest.raises(lowbit.LowbitError, match="truncated.onnx"):
        lowbit.Model(bad)
    with pytest.raises(lowbit.LowbitError, match="q-scale-zero.onnx"):
        lowbit.Model(need(REPRO / "q-scale-zero.onnx", "the shared repro folder")).run(np.zeros((1, 1, 4, 4), np.float32))
    m = lowbit.Model(DEFAULT)
    with pytest.raises(lowbit.LowbitError, match=r"fmnist-default.onnx: node '.*Conv'.*3 channels"):
        m.run(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(lowbit.LowbitError, match="rank 4"):
        m.run(np.zeros((28, 28), np.float32))
    with pytest.raises(lowbit.LowbitError, match="2 given"):
        m.run([np.zeros((1, 1, 28, 28), np.float32)] * 2)
    with pytest.raises(lowbit.LowbitError, match="missing"):
        m.run({"x": np.zeros((1, 1, 28, 28), np.float32)})
    with pytest.raises(lowbit.LowbitError, match="out of range"):
        lowbit.quantize(DEFAULT, np.zeros((4, 1, 28, 28), np.float32), tmp / "o.onnx", weights=9)

    def never_read():
        raise AssertionError("the data loader was read before the options were checked")
        yield

    for bad in ({"method": "mimax"}, {"weights": 9}, {"calib_n": 0}, {"max_drop": float("nan")}):
        with pytest.raises(lowbit.LowbitError):
            lowbit.quantize(DEFAULT, never_read(), tmp / "o.onnx", **bad)
    with pytest.raises(lowbit.LowbitError, match="folder"):
        lowbit.quantize(DEFAULT, never_read(), tmp / "no-such-dir" / "o.onnx")
    with pytest.raises(lowbit.LowbitError, match="eval needs"):
        lowbit.quantize(DEFAULT, never_read(), tmp / "o.onnx", eval=FMNIST)
    with pytest.raises(lowbit.LowbitError, match="threads"):
        lowbit.Model(DEFAULT, threads=-1)
    with pytest.raises(lowbit.LowbitError, match="labels"):
        lowbit.quantize(DEFAULT, [(np.zeros((1, 28, 28)), 2**40)], tmp / "o.onnx")
    import pickle
    e = pickle.loads(pickle.dumps(lowbit.LowbitError("x.onnx: reason")))
    assert isinstance(e, lowbit.LowbitError) and str(e) == "x.onnx: reason"
    with pytest.raises(lowbit.LowbitError, match="differs from the first"):
        lowbit.quantize(DEFAULT, [np.zeros((1, 28, 28)), np.zeros((1, 14, 14))], tmp / "o.onnx")
    with pytest.raises(lowbit.LowbitError, match="no images"):
        lowbit.quantize(DEFAULT, iter([]), tmp / "o.onnx")
    with pytest.raises(lowbit.LowbitError, match="calibration data .* has images of shape"):
        lowbit.quantize(DEFAULT, np.zeros((2, 3, 28, 28), np.float32), tmp / "o.onnx")
    with pytest.raises(lowbit.LowbitError, match="is the input .*refusing to replace it"):
        lowbit.quantize(DEFAULT, np.zeros((2, 1, 28, 28), np.float32), DEFAULT)
    assert not (tmp / "o.onnx").exists(), "nothing is written when quantization fails"
    with pytest.raises(TypeError):
        m._m.run([object()])


def test_two_python_threads_run_one_model_at_once(tmp):
    """Two Python threads share one Model (the GIL is released while it runs; each run has its own
    state): every result equals the single-threaded one."""
    w8 = tmp / "threads-w8a8.onnx"
    lowbit.quantize(DEFAULT, np.stack(list(fmnist_train_images(32))), w8, method="minmax")
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 1, 28, 28)).astype(np.float32) for _ in range(40)]
    for path in (DEFAULT, w8):
        m = lowbit.Model(path)
        want = [m.run(x)[0] for x in xs]
        got = [None] * len(xs)
        errors = []

        def work(k):
            try:
                for _ in range(5):
                    for i in range(k, len(xs), 2):
                        got[i] = m.run(xs[i])[0]
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        assert all(bits_equal(g, w) for g, w in zip(got, want)), path.name
        assert m.plans_compiled == 1


def test_bench_and_cpu_name_the_path():
    c = lowbit.cpu()
    assert c["paths"]["int8"] and c["features"] is not None
    b = lowbit.bench(DEFAULT, iters=5, warmup=1)
    assert b["median_ms"] > 0 and b["paths"]["f32"] == c["paths"]["f32"] and b["precision"] == "f32"
