#!/usr/bin/env python3
"""Float training speed: lowbit against PyTorch CPU on fmnist-resnet's architecture (issue 5, line 1).

Both sides train the same ResNet-20-style network (3 stages x 3 BasicBlocks, 16/32/64 channels, 1x1
projection shortcuts with BatchNorm, 272,186 trainable parameters) from fresh weights for one epoch on
the first N Fashion-MNIST training images, with the same batch, thread count, optimizer (SGD, Nesterov
momentum 0.9, weight decay 5e-4 on conv/linear weights), augmentation (random crop from a 2-pixel padded
image, horizontal flip), then evaluate on the first M test images. The epoch time includes that evaluation
on both sides. Each configuration is run alternately, lowbit then PyTorch, so both see the same machine.

PyTorch: whatever `import torch` gives in the interpreter running this script (Debian's python3-torch
1.13 here: `apt-get install -y python3-torch`, run with /usr/bin/python3).

Usage: /usr/bin/python3 bench/train_vs_torch.py [--images 10000] [--test 2000] [--threads 1,2]
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "/usr/share/datasets/fashion-mnist"
MODEL = os.path.join(ROOT, "..", "shared", "zoo", "fmnist-resnet.onnx")
MEAN, STD = 0.2860, 0.3530


def idx(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def torch_epoch(xtr, ytr, xte, yte, threads, batch, seed=0):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ResNet20()
    decay = [p for n, p in net.named_parameters() if p.dim() > 1]
    rest = [p for n, p in net.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    fill = float(xtr.min())
    t0 = time.perf_counter()
    net.train()
    order = rng.permutation(len(xtr))
    steps = len(xtr) // batch
    for s in range(steps):
        ix = order[s * batch : (s + 1) * batch]
        xb = np.full((batch, 1, 32, 32), fill, dtype=np.float32)
        xb[:, 0, 2:30, 2:30] = xtr[ix]
        out = np.empty((batch, 1, 28, 28), dtype=np.float32)
        for j in range(batch):
            dy, dx = rng.integers(0, 5, size=2)
            img = xb[j, :, dy : dy + 28, dx : dx + 28]
            out[j] = img[:, :, ::-1] if rng.random() < 0.5 else img
        x = torch.from_numpy(out)
        y = torch.from_numpy(ytr[ix].astype(np.int64))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(xte), 500):
            xb = torch.from_numpy(xte[s : s + 500, None].copy())
            correct += int((net(xb).argmax(1).numpy() == yte[s : s + 500]).sum())
    return time.perf_counter() - t0, correct / len(xte), sum(p.numel() for p in net.parameters())


def lowbit_epoch(n, m, threads, batch):
    exe = os.path.join(ROOT, "target", "release", "lowbit")
    with tempfile.TemporaryDirectory() as d:
        js = os.path.join(d, "t.json")
        cmd = [exe, "train", MODEL, "--data", DATA, "--reinit", "--epochs", "1", "--limit", str(n),
               "--test-limit", str(m), "--threads", str(threads), "--batch", str(batch), "--no-resume",
               "-o", os.path.join(d, "t.onnx"), "--json", js]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.load(open(js))
    ep = r["history"][0] if "history" in r else r["epochs"][0]
    return ep["seconds"], ep["test_acc"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    xtr = ((idx(f"{DATA}/train-images-idx3-ubyte.gz")[: a.images] / 255.0 - MEAN) / STD).astype(np.float32)
    ytr = idx(f"{DATA}/train-labels-idx1-ubyte.gz")[: a.images]
    xte = ((idx(f"{DATA}/t10k-images-idx3-ubyte.gz")[: a.test] / 255.0 - MEAN) / STD).astype(np.float32)
    yte = idx(f"{DATA}/t10k-labels-idx1-ubyte.gz")[: a.test]
    rows = []
    for t in [int(s) for s in a.threads.split(",")]:
        lb, pt = [], []
        for _ in range(a.rounds):
            lb.append(lowbit_epoch(a.images, a.test, t, a.batch))
            pt.append(torch_epoch(xtr, ytr, xte, yte, t, a.batch))
            print(f"threads {t}: lowbit {lb[-1][0]:.1f} s, PyTorch {pt[-1][0]:.1f} s", file=sys.stderr)
        ls, ps = min(x[0] for x in lb), min(x[0] for x in pt)
        rows.append((t, ls, ps, ls / ps, pt[0][2]))
    print(f"\nPyTorch {torch.__version__}; {a.images} training images + {a.test} test images per epoch, "
          f"batch {a.batch}, best of {a.rounds} alternating rounds")
    print("| threads | lowbit s / epoch | PyTorch s / epoch | ratio lowbit/PyTorch | 60k-image epoch, lowbit (est.) |")
    print("|---|---|---|---|---|")
    for t, ls, ps, r, _ in rows:
        print(f"| {t} | {ls:.1f} | {ps:.1f} | {r:.2f} | {ls * 60000 / a.images:.0f} s |")


if __name__ == "__main__":
    main()
