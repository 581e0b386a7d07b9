#!/usr/bin/env bash
# Issue 3, two tables on the labelled Fashion-MNIST models (calibration on the first 1,000 *training*
# images, evaluation on the 10,000 test images, min-max activation ranges unless said), from the
# repository root after `cargo build --release`:
#  1. DFQ on the models that keep BatchNorm unfolded, per-tensor W4A8: naive, + cross-layer
#     equalization, + bias absorption, + bias correction from calibration means, + bias correction
#     and absorption from BatchNorm statistics (--bn-stats, DFQ's data-free estimate).
#  2. Weight schemes at W4A8 per-channel: linear, power-of-two scales, logarithmic, k-means.
# Each file is also run in ONNX Runtime with `python bench/qat_ort.py FILE` when ./venv exists.
. "$(dirname "$0")/env.sh"
row() { # name json
  python3 - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
j = json.load(open(path))
f, q = j["float_top1"] * 100, j["quant_top1"] * 100
print(f"| {name} | {f:.2f}% | {q:.2f}% | {q - f:+.2f} pp | {j['quant_weight_bytes'] / j['float_weight_bytes'] * 100:.1f}% |")
PY
}
echo "| model, per-tensor W4A8, min-max | float | quantized | change | weight bytes vs f32 |"
echo "|---|---|---|---|---|"
for m in fmnist-resnet fmnist-mobilenet; do
  for flags in "--no-bias-correction" "--cle --no-bias-correction" "--cle --absorb-bias --no-bias-correction" \
               "--cle --absorb-bias" "--cle --absorb-bias --bn-stats"; do
    $L quantize $Z/$m.onnx --calib $F --calib-n 1000 --eval $F --per-tensor --weights 4 --method minmax $flags \
      -o $T/q.onnx --json $T/q.json > /dev/null
    row "$m $flags" $T/q.json
  done
done
echo
echo "| model, W4A8 per-channel, --scheme | float | quantized | change | weight bytes vs f32 |"
echo "|---|---|---|---|---|"
for m in fmnist-resnet fmnist-mobilenet; do
  for s in linear pow2 log kmeans; do
    $L quantize $Z/$m.onnx --calib $F --calib-n 1000 --eval $F --weights 4 --scheme $s -o $T/$m-$s.onnx --json $T/q.json > /dev/null
    row "$m $s" $T/q.json
  done
done
if [ -x ./venv/bin/python ]; then
  echo
  ./venv/bin/python bench/qat_ort.py $T/*-linear.onnx $T/*-pow2.onnx $T/*-log.onnx $T/*-kmeans.onnx
fi
