#!/usr/bin/env bash
# Post-training quantization accuracy (issue 3 acceptance 2 and 3), from the repository root after
# `cargo build --release`. Fashion-MNIST: calibration on the first 1,000 *training* images,
# evaluation on the 10,000 test images. mnist-cnn: calibration on the first 1,000 of mnist10k,
# evaluation on all 10,000. MobileNetV2 DFQ ablation: per-tensor W8A8, min-max activation ranges,
# calibration and agreement on photos224.
. "$(dirname "$0")/env.sh"
row() { # name json
  python3 - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
j = json.load(open(path))
if j.get("float_top1") is not None:
    f, q = j["float_top1"] * 100, j["quant_top1"] * 100
    print(f"| {name} | {j['method']} | {f:.2f}% | {q:.2f}% | {q - f:+.2f} pp | {j['quant_weight_bytes'] / j['float_weight_bytes'] * 100:.1f}% |")
else:
    a = j["agreement"]
    print(f"| {name} | {j['method']} | - | agreement {a['top1'] * 100:.2f}% | cosine {a['cosine']:.4f} | {j['quant_weight_bytes'] / j['float_weight_bytes'] * 100:.1f}% |")
PY
}
echo "| model / setting | range method | float top-1 | quantized | change | weight bytes vs f32 |"
echo "|---|---|---|---|---|---|"
for spec in "fmnist-resnet 8" "fmnist-mobilenet 8" "fmnist-mobilenet 4"; do
  set -- $spec
  $L quantize $Z/$1.onnx --calib $F --calib-n 1000 --eval $F --weights $2 -o $T/q.onnx --json $T/q.json > /dev/null
  row "$1 W$2A8 per-channel" $T/q.json
done
$L quantize $Z/mnist-cnn.onnx --calib ../shared/data/mnist10k --calib-split test --calib-n 1000 --eval ../shared/data/mnist10k -o $T/q.onnx --json $T/q.json > /dev/null
row "mnist-cnn W8A8 per-channel" $T/q.json
P=../shared/data/photos224
M=$Z/mobilenetv2-imagenet.onnx
for flags in "--no-bias-correction" "--cle --no-bias-correction" "--cle --absorb-bias --no-bias-correction" "--cle --absorb-bias" \
             "--cle --cle-relu6-to-relu --no-bias-correction" "--cle --cle-relu6-to-relu --absorb-bias --no-bias-correction" \
             "--cle --cle-relu6-to-relu --absorb-bias"; do
  $L quantize $M --calib $P --calib-split test --eval $P --per-tensor --method minmax $flags -o $T/q.onnx --json $T/q.json > /dev/null
  row "mobilenetv2 per-tensor W8A8 $flags" $T/q.json
done
