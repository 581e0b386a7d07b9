"""lowbit: low-bit quantization and an integer runtime for ONNX CNNs, from Python.

    import numpy as np, lowbit
    m = lowbit.Model("model.onnx")                  # float or QDQ (integer kernels)
    logits, = m.run(np.zeros((1, 3, 224, 224), np.float32))
    rep = lowbit.quantize("model.onnx", my_images(), "model-w8a8.onnx", weights=8, acts=8)
    print(rep.table())

Everything runs in lowbit's Rust library (the same code as the `lowbit` command): `quantize`
takes the command's options and writes the same QDQ file and JSON report; `Model.run` gives the
same outputs as `lowbit run`. Errors are `LowbitError` with the command line's one-line message
(file, node, reason).
"""

from __future__ import annotations

import json as _json
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lowbit
from ._lowbit import LowbitError

__all__ = ["Model", "Report", "Layer", "LowbitError", "quantize", "evaluate", "bench", "inspect", "cpu"]
__version__ = _lowbit.__version__

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Any

_DTYPES = {
    "float32": np.float32,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class Model:
    """An ONNX model compiled by lowbit's runtime (float kernels, or integer kernels for QDQ files).

    Plans are compiled on the first call at each input shape (the four most recently used are
    kept). `run` releases the GIL: several Python threads can run one Model at once, each on its
    own state, so `threads=1` models on N Python threads use N cores.
    """

    def __init__(self, path: PathLike, threads: int = 1) -> None:
        self._m = _lowbit.Model(_path(path), _count("threads", threads))

    @classmethod
    def load(cls, path: PathLike, threads: int = 1) -> "Model":
        """Loads and checks `path` (same as `Model(path, threads)`)."""
        return cls(path, threads)

    @property
    def input_names(self) -> List[str]:
        return self._m.input_names

    @property
    def input_shapes(self) -> List[Optional[List[Optional[int]]]]:
        """Declared input shapes, None for symbolic dimensions. Any size of the same rank runs."""
        return self._m.input_shapes

    @property
    def input_dtypes(self) -> List[str]:
        return self._m.input_dtypes

    @property
    def output_names(self) -> List[str]:
        return self._m.output_names

    @property
    def path(self) -> str:
        return os.fspath(self._m.path)

    @property
    def threads(self) -> int:
        return self._m.threads

    @property
    def plans_compiled(self) -> int:
        """Plans compiled so far (one per input shape met)."""
        return self._m.plans_compiled

    def run(self, inputs: Union[ArrayLike, Sequence[ArrayLike], Dict[str, ArrayLike]]) -> List[np.ndarray]:
        """Runs the model; returns every output (in `output_names` order) as a numpy array.

        `inputs`: one array (a model with one input), a list in `input_names` order, or a dict by
        name. Arrays of another dtype are converted to the input's (float32 for images); a float32
        C-contiguous array is used as it is.
        """
        names = self._m.input_names
        if isinstance(inputs, dict):
            missing = [n for n in names if n not in inputs]
            extra = [k for k in inputs if k not in names]
            if missing or extra:
                raise LowbitError(
                    f"{self.path}: inputs {sorted(inputs)} do not match the model's {names}"
                    + (f" (missing {missing})" if missing else "")
                    + (f" (unknown {extra})" if extra else "")
                )
            xs = [inputs[n] for n in names]
        elif isinstance(inputs, (list, tuple)):
            xs = list(inputs)
        else:
            xs = [inputs]
        if len(xs) != len(names):
            raise LowbitError(f"{self.path}: the model has {len(names)} input(s) ({', '.join(names)}), {len(xs)} given")
        conv = []
        for x, dt in zip(xs, self._m.input_dtypes):
            want = _DTYPES[dt]
            if not (isinstance(x, np.ndarray) and x.dtype == want):
                x = np.asarray(x, dtype=want)
            conv.append(x)
        return self._m.run(conv)

    __call__ = run

    def __repr__(self) -> str:
        return repr(self._m)


class Layer(NamedTuple):
    """One quantized layer of a report: weight and activation bits (None where it stays float)."""

    node: str
    op: str
    params: int
    weight_bits: Optional[int]
    act_bits: Optional[int]


class Report:
    """What `quantize` did: the same fields as the command line's JSON report (`.json`), the
    per-layer table as `Layer`s, and `table()` for a printable summary."""

    def __init__(self, j: Dict[str, Any]) -> None:
        self.json: Dict[str, Any] = j
        self.model: str = j["model"]
        self.output: str = j["output"]
        self.weight_bits: int = j["weights_bits"]
        self.act_bits: int = j["act_bits"]
        self.method: str = j["method"]
        self.per_channel: bool = j["per_channel"]
        self.bias_correction: bool = j["bias_correction"]
        self.calibration_images: int = j["calibration_images"]
        self.candidates: List[Dict[str, Any]] = j["method_candidates"]
        self.layers: List[Layer] = [
            Layer(l["node"], l["op"], l["params"], l["weight_bits"], l["act_bits"]) for l in j["layers"]
        ]
        self.sensitivity: Optional[List[Dict[str, Any]]] = j["sensitivity"]
        self.mixed_precision: Optional[Dict[str, Any]] = j["mixed_precision"]
        self.float_weight_bytes: int = j["float_weight_bytes"]
        self.quant_weight_bytes: int = j["quant_weight_bytes"]
        self.float_top1: Optional[float] = j["float_top1"]
        self.quant_top1: Optional[float] = j["quant_top1"]
        self.agreement: Optional[Dict[str, float]] = j["agreement"]
        self.seconds: float = j["seconds"]

    def table(self) -> str:
        """The summary and per-layer table as text."""
        bits = lambda b: "f32" if b is None else str(b)  # noqa: E731
        lines = [
            f"{self.model} -> {self.output} (W{self.weight_bits}A{self.act_bits}, {self.method}, "
            f"{self.calibration_images} calibration images, {self.seconds:.1f} s)",
            f"weights {self.float_weight_bytes / 1e3:.1f} KB -> {self.quant_weight_bytes / 1e3:.1f} KB",
        ]
        if self.quant_top1 is not None and self.float_top1 is not None:
            lines.append(f"top-1 {self.float_top1 * 100:.2f}% -> {self.quant_top1 * 100:.2f}%")
        rows = [("layer", "op", "params", "w bits", "a bits")]
        rows += [(l.node, l.op, str(l.params), bits(l.weight_bits), bits(l.act_bits)) for l in self.layers]
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * n for n in w))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"lowbit.Report({self.output!r}, W{self.weight_bits}A{self.act_bits}, method={self.method!r}, "
            f"{len(self.layers)} layers, {self.quant_weight_bytes} weight bytes)"
        )


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, bytes, os.PathLike))


def _path(p: Any) -> str:
    return os.fsdecode(os.fspath(p))


def _count(name: str, v: Any, least: int = 1) -> int:
    """A whole number of at least `least`, or LowbitError naming the argument."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least or v >= 2**63:
        raise LowbitError(f"{name} {v!r}: want a whole number of at least {least}")
    return int(v)


def _labels(y: Any, what: str) -> np.ndarray:
    y = np.atleast_1d(np.asarray(y)).reshape(-1)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= 2**32):
        raise LowbitError(f"{what}: labels must be whole numbers in 0..2^32, got {y.dtype} {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _collect(images: Any, limit: Optional[int], what: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Images (N, C, H, W) float32 and labels (or None) from an array or an iterable of arrays
    (C, H, W) / batches (N, C, H, W), optionally as (images, labels) pairs; at most `limit` images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        x = images[:limit] if limit is not None else images
        return np.ascontiguousarray(x, dtype=np.float32), None
    chunks: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    n = 0
    for item in images:
        y = None
        # (images, labels) pairs: tuples, or the lists a PyTorch DataLoader yields.
        if isinstance(item, (tuple, list)) and len(item) == 2 and np.ndim(item[1]) <= 1:
            item, y = item
        elif isinstance(item, tuple):
            raise LowbitError(f"{what}: a tuple item must be (images, labels), got {len(item)} elements")
        a = np.asarray(item, dtype=np.float32)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4:
            raise LowbitError(f"{what}: each item must be an image (C, H, W) or a batch (N, C, H, W), got shape {a.shape}")
        if chunks and a.shape[1:] != chunks[0].shape[1:]:
            raise LowbitError(f"{what}: image shape {a.shape[1:]} differs from the first one's {chunks[0].shape[1:]}")
        if (y is None) != (not labels) and chunks:
            raise LowbitError(f"{what}: some items have labels and some do not")
        if y is not None:
            yl = _labels(y, what)
            if len(yl) != len(a):
                raise LowbitError(f"{what}: {len(yl)} labels for a batch of {len(a)} images")
            labels.append(yl)
        if limit is not None and n + len(a) > limit:
            a = a[: limit - n]
            if labels:
                labels[-1] = labels[-1][: limit - n]
        chunks.append(a)
        n += len(a)
        if limit is not None and n >= limit:
            break
    if not chunks:
        raise LowbitError(f"{what}: no images")
    x = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    return x, (np.concatenate(labels).astype(np.uint32) if labels else None)


def quantize(
    model: PathLike,
    calib: Union[PathLike, Iterable[Any], np.ndarray],
    out: PathLike,
    *,
    weights: int = 8,
    acts: int = 8,
    method: str = "auto",
    per_channel: bool = True,
    scheme: str = "linear",
    calib_n: int = 1000,
    preset: Optional[str] = None,
    calib_split: str = "train",
    cle: bool = False,
    cle_relu6_to_relu: bool = False,
    absorb_bias: bool = False,
    bias_correction: bool = True,
    bn_stats: bool = False,
    sensitivity: bool = False,
    max_drop: Optional[float] = None,
    skip_first: bool = False,
    skip_last: bool = False,
    rounding: str = "nearest",
    adaround_iters: int = 1000,
    adaround_images: int = 256,
    eval: Optional[PathLike] = None,
    eval_limit: Optional[int] = None,
    threads: int = 1,
    json: Optional[PathLike] = None,
    plots: Optional[PathLike] = None,
    verbose: bool = False,
) -> Report:
    """Post-training quantization of `model` to a QDQ ONNX file `out` (`lowbit quantize`).

    `calib`: preprocessed images as an array (N, C, H, W) or any iterable of images (C, H, W),
    batches (N, C, H, W) or (images, labels) pairs, e.g. a generator over your data loader; or a
    path lowbit reads itself (IDX file/folder or image folder, preprocessed by `preset`). The first
    `calib_n` images are used. Labels are only read by `sensitivity` / `max_drop` scoring.
    `eval` (a path) needs lowbit's own preprocessing, so it goes with a path `calib`.
    `rounding="adaround"` learns each weight's rounding layer by layer (AdaRound).
    The other options are the command line's (`lowbit quantize --help`). Returns a `Report`;
    `json` also writes it as the command line does, `verbose` prints its tables.
    """
    opts = [("-o", out), ("--weights", weights), ("--acts", acts), ("--method", method), ("--scheme", scheme),
            ("--calib-n", _count("calib_n", calib_n)), ("--calib-split", calib_split),
            ("--threads", _count("threads", threads)), ("--max-drop", max_drop), ("--eval", eval),
            ("--eval-limit", eval_limit), ("--json", json), ("--plots", plots), ("--preset", preset),
            ("--rounding", rounding), ("--adaround-iters", _count("adaround_iters", adaround_iters)),
            ("--adaround-images", _count("adaround_images", adaround_images))]
    # `--flag=value` and the model after `--`: values starting with '-' stay values.
    flags = [f"{f}={_path(v) if _is_path(v) else v}" for f, v in opts if v is not None]
    for on, flag in [
        (not per_channel, "--per-tensor"),
        (cle, "--cle"),
        (cle_relu6_to_relu, "--cle-relu6-to-relu"),
        (absorb_bias, "--absorb-bias"),
        (not bias_correction, "--no-bias-correction"),
        (bn_stats, "--bn-stats"),
        (sensitivity, "--sensitivity"),
        (skip_first, "--skip-first"),
        (skip_last, "--skip-last"),
    ]:
        if on:
            flags.append(flag)
    flags += ["--", _path(model)]
    if _is_path(calib):
        _lowbit.check_quantize(flags, calib_path=_path(calib))
        j = _lowbit.quantize(flags, calib_path=_path(calib), verbose=verbose)
    else:
        if preset is not None:
            raise LowbitError("quantize: preset applies to a calibration path; arrays come preprocessed")
        # Options, model and outputs are checked before the data loader is read.
        _lowbit.check_quantize(flags, arrays=True)
        x, y = _collect(calib, calib_n, "calibration data")
        j = _lowbit.quantize(flags, calib=x, labels=None if y is None else y.tolist(), verbose=verbose)
    return Report(_json.loads(j))


def evaluate(
    model: PathLike,
    data: Union[PathLike, Iterable[Any], np.ndarray],
    *,
    labels: Optional[ArrayLike] = None,
    reference: Optional[PathLike] = None,
    preset: Optional[str] = None,
    split: str = "test",
    limit: Optional[int] = None,
    batch: int = 50,
    threads: int = 1,
    json: Optional[PathLike] = None,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Classification metrics of `model` (`lowbit eval`): top-1/top-5 where labels are known, and
    top-1 agreement, top-5 overlap, logit cosine and KL against `reference` (e.g. the float model).

    `data`: preprocessed images as an array or iterable (as for `quantize`, labels from pairs or
    `labels`), or a path lowbit reads with `preset`, `split`, `limit`. Returns the JSON report.
    """
    j_path = None if json is None else _path(json)
    ref = None if reference is None else _path(reference)
    batch, threads = _count("batch", batch), _count("threads", threads)
    limit = None if limit is None else _count("limit", limit)
    if _is_path(data):
        if labels is not None:
            raise LowbitError("evaluate: labels go with arrays; a path brings its own (IDX labels, labels.txt)")
        j = _lowbit.evaluate(_path(model), data_path=_path(data), reference=ref, preset=preset,
                             split=split, limit=limit, batch=batch, threads=threads, json=j_path, verbose=verbose)
    else:
        if preset is not None or split != "test":
            raise LowbitError("evaluate: preset and split apply to a data path; arrays come preprocessed")
        x, y = _collect(data, limit, "evaluation data")
        if labels is not None:
            y = _labels(labels, "evaluation labels")
            if len(y) != len(x):
                raise LowbitError(f"evaluation data: {len(y)} labels for {len(x)} images")
        j = _lowbit.evaluate(_path(model), data=x, labels=None if y is None else [int(v) for v in y],
                             reference=ref, batch=batch, threads=threads, json=j_path, verbose=verbose)
    return _json.loads(j)


def bench(
    model: PathLike,
    *,
    batch: int = 1,
    threads: int = 1,
    iters: int = 50,
    warmup: int = 10,
    input_shape: Optional[Sequence[int]] = None,
    json: Optional[PathLike] = None,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Latency of `model` on its input shape (`lowbit bench`): median/p90/mean ms, images/s,
    GMAC/s, the kernel paths and CPU features it ran on. Returns the JSON report."""
    shape = None if input_shape is None else [_count("input_shape", d) for d in input_shape]
    j = _lowbit.bench(_path(model), batch=_count("batch", batch), threads=_count("threads", threads),
                      iters=_count("iters", iters), warmup=_count("warmup", warmup, 0), input_shape=shape,
                      json=None if json is None else _path(json), verbose=verbose)
    return _json.loads(j)


def inspect(
    model: PathLike,
    *,
    input_shape: Optional[Sequence[int]] = None,
    json: Optional[PathLike] = None,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Layers, kernels, MACs and memory of `model` as lowbit compiles it (`lowbit inspect`)."""
    shape = None if input_shape is None else [_count("input_shape", d) for d in input_shape]
    j = _lowbit.inspect(_path(model), input_shape=shape, json=None if json is None else _path(json),
                        verbose=verbose)
    return _json.loads(j)


def cpu() -> Dict[str, Any]:
    """This CPU's model name and features, and the kernel paths lowbit runs on it."""
    return _json.loads(_lowbit.cpu())
