#!/bin/sh
# Quantization-aware training on full Fashion-MNIST (60,000 train / 10,000 test), one epoch each,
# 2 threads, then every exported QDQ file in ONNX Runtime vs lowbit's integer runtime.
# Figures in bench/RESULTS.md ("QAT on Fashion-MNIST"). About 8 min (MobileNet) to 21 min
# (ResNet, DSQ) per run on this 2-core machine.
set -e
cd "$(dirname "$0")/.."
D=/usr/share/datasets/fashion-mnist
OUT=${OUT:-bench/qat-out}
mkdir -p "$OUT"
run() { name=$1; shift; ./target/release/lowbit train "$@" --data $D -o "$OUT/$name.onnx" --json "$OUT/$name.json" --no-resume; }
for m in lsq dsq ste; do
  run resnet-w4a4-$m ../shared/zoo/fmnist-resnet.onnx --qat $m --epochs 1
  run mobilenet-w4a4-$m ../shared/zoo/fmnist-mobilenet.onnx --qat $m --epochs 1
done
run resnet-w2a2-dsq ../shared/zoo/fmnist-resnet.onnx --qat dsq --weights 2 --acts 2 --epochs 1
run resnet-w2a2-dsq-kd ../shared/zoo/fmnist-resnet.onnx --qat dsq --weights 2 --acts 2 --epochs 1 --distill
./venv/bin/python bench/qat_ort.py "$OUT"/*.onnx
