#!/usr/bin/env bash
# Installs what lowbit's tests need, then runs the whole test suite.
#  - Debian packages: Fashion-MNIST (dataset-fashion-mnist) and ONNX's operator conformance data
#    (libonnx-testdata);
#  - a Python venv (./venv) with ONNX Runtime, used live by the cross-check tests, and maturin and
#    pytest for the Python package: its wheel is built (reusing the release build) and installed into
#    ./venv, and its pytest suite (python/tests) runs after the Rust tests.
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

if ! venv/bin/python -c "import onnxruntime, numpy, onnx, maturin, pytest" >/dev/null 2>&1; then
  python3 -m venv venv
  venv/bin/pip install -q --disable-pip-version-check onnxruntime==1.32.0 numpy==2.4.6 onnx==1.23.2 \
    maturin==1.16.0 pytest==9.2.0
fi
export LOWBIT_PYTHON="$PWD/venv/bin/python"

status=0
cargo test --release --workspace "$@" || status=$?

# The Python package (python/, native module crates/lowbit-python): wheel, install, pytest.
cargo build --release -q -p lowbit-cli
rm -rf target/wheels
(cd python && ../venv/bin/maturin build --release --quiet --interpreter ../venv/bin/python -o ../target/wheels)
venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/lowbit-*.whl
LOWBIT_BIN="$PWD/target/release/lowbit" venv/bin/python -m pytest -q python/tests || status=$?
exit $status
