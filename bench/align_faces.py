#!/usr/bin/env python3
"""Aligned 112x112 face crops for embedding checks: CenterFace (float, run by ONNX Runtime) finds
the most confident face and its 5 landmarks in each photo, a similarity transform maps them onto
the ArcFace template, and the photo is resampled bilinearly into a 112x112 PNG.

usage: python bench/align_faces.py IN_FOLDER OUT_FOLDER
(from the repository root after `cargo build --release`, with ./venv from scripts/test.sh)
Images are read through `lowbit dump-data` (no imaging library is needed); PNGs are written with zlib.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWBIT = os.environ.get("LOWBIT_BIN", os.path.join(ROOT, "target", "release", "lowbit"))
DETECTOR = os.path.join(ROOT, "..", "shared", "zoo", "det-centerface.onnx")
# ArcFace's 112x112 template: eyes, nose tip, mouth corners.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])


def dump(path, flags, prefix):
    subprocess.run([LOWBIT, "dump-data", path, *flags, "-o", prefix], check=True, stdout=subprocess.DEVNULL)
    return np.load(prefix + ".npy")[0]


def detector():
    m = onnx.load(DETECTOR)
    for d in m.graph.input[0].type.tensor_type.shape.dim[0:1] + m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.ClearField("dim_value")
        d.dim_param = "hw"
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    o = ort.SessionOptions()
    o.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def best_face(sess, x):
    heat, scale, off, lms = sess.run(None, {sess.get_inputs()[0].name: x[None]})
    y, xx = np.unravel_index(np.argmax(heat[0, 0]), heat.shape[2:])
    s0, s1 = np.exp(scale[0, 0, y, xx]) * 4, np.exp(scale[0, 1, y, xx]) * 4
    cy, cx = (y + off[0, 0, y, xx] + 0.5) * 4, (xx + off[0, 1, y, xx] + 0.5) * 4
    x1, y1 = max(0.0, cx - s1 / 2), max(0.0, cy - s0 / 2)
    pts = np.array([[lms[0, 2 * j + 1, y, xx] * s1 + x1, lms[0, 2 * j, y, xx] * s0 + y1] for j in range(5)])
    return float(heat[0, 0, y, xx]), pts


def similarity(src, dst):
    """Least-squares similarity transform (Umeyama) taking src points to dst: 2x3 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    c = np.trace(np.diag(sig) @ e) / s.var(0).sum()
    t = mu_d - c * r @ mu_s
    return np.hstack([c * r, t[:, None]])


def warp(img, m, size=112):
    """img: CHW float 0-255; m maps image -> crop. Bilinear, zero outside."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:size, 0:size]
    pts = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)])
    px, py = pts[0], pts[1]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    c, h, w = img.shape
    out = np.zeros((c, size * size))
    for dy, dx, wt in [(0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)]:
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        out[:, ok] += img[:, yy[ok], xx[ok]] * wt[ok]
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(c, size, size)


def write_png(path, chw):
    h, w = chw.shape[1:]
    raw = b"".join(b"\x00" + chw[:, y, :].T.tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path + ".tmp", "wb") as f:
        f.write(png)
    os.replace(path + ".tmp", path)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    sess = detector()
    tmp = tempfile.mkdtemp(prefix="lowbit-align-")
    report = []
    for name in sorted(os.listdir(src)):
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        p = os.path.join(src, name)
        full = dump(p, ["--scale", "1"], os.path.join(tmp, "full"))
        # The photo's own aspect, the longer side 640, both sides multiples of 32.
        k = 640 / max(full.shape[1:])
        dh, dw = (max(32, round(v * k / 32) * 32) for v in full.shape[1:])
        det = dump(p, ["--scale", "1", "--size", f"{dw}x{dh}"], os.path.join(tmp, "det"))
        score, pts = best_face(sess, det)
        pts = pts * [full.shape[2] / dw, full.shape[1] / dh]
        crop = warp(full, similarity(pts, TEMPLATE))
        write_png(os.path.join(dst, os.path.splitext(name)[0] + ".png"), crop)
        report.append({"image": name, "score": score, "landmarks": pts.round(1).tolist()})
        print(name, "face score %.3f" % score)
    json.dump(report, open(os.path.join(dst, "faces.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
