# Shared set-up of the bench shell scripts (sourced): repository root, lowbit's binary, the data,
# the zoo and a temporary folder removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
L=target/release/lowbit
F=/usr/share/datasets/fashion-mnist
Z=../shared/zoo
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
