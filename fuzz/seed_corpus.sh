#!/bin/sh
# Fills fuzz/corpus/onnx_reader/ (gitignored) with seed models: three small zoo models and 200 of
# the ONNX node test models (mostly for operators lowbit implements, plus a sample of others).
set -eu
cd "$(dirname "$0")"
out=corpus/onnx_reader
mkdir -p "$out"
zoo=${ZOO:-/work/shared/zoo}
for m in mnist-cnn fmnist-mobilenet ppocr-textline-cls; do
    cp "$zoo/$m.onnx" "$out/"
done
nodes=${NODES:-/usr/share/libonnx-testdata/data/node}
ops='^test_(conv|batchnorm|relu|clip|hardsigmoid|hardswish|sigmoid|add|sub|mul|div|maxpool|averagepool|globalaveragepool|globalmaxpool|gemm|matmul|flatten|reshape|concat|softmax|identity|shape|gather|unsqueeze|squeeze|cast|slice|transpose|constant)'
sel=$(mktemp)
ls "$nodes" | grep -E "$ops" > "$sel"
{
    awk 'NR%2==1' "$sel" | head -150
    ls "$nodes" | grep -v -x -f "$sel" | awk 'NR%14==0' | head -50
    awk 'NR%2==0' "$sel" | head -35
} | while read -r d; do
    [ -f "$nodes/$d/model.onnx" ] && cp "$nodes/$d/model.onnx" "$out/node_$d.onnx"
done
rm -f "$sel"
echo "$(ls "$out" | wc -l) files in $out"
