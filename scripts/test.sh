#!/usr/bin/env bash
# Installs what lowbit's tests need, then runs the whole test suite.
#  - Debian packages: Fashion-MNIST (dataset-fashion-mnist) and ONNX's operator conformance data
#    (libonnx-testdata);
#  - a Python venv (./venv) with ONNX Runtime, used live by the cross-check tests.
# Tests never skip for missing data: they fail and say how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
dpkg -s libonnx-testdata >/dev/null 2>&1 || need_apt+=(libonnx-testdata)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! venv/bin/python -c "import onnxruntime, numpy" >/dev/null 2>&1; then
  python3 -m venv venv
  venv/bin/pip install -q --disable-pip-version-check onnxruntime==1.32.0 numpy==2.4.6 onnx==1.23.2
fi
export LOWBIT_PYTHON="$PWD/venv/bin/python"

cargo test --release --workspace "$@"
