#!/usr/bin/env bash
# Prints the path of a Python that has the PyTorch side of the benchmarks (torch,
# transformers, peft, pinned in scripts/requirements-golden.txt), building the venv
# first if it is missing: TORCH_VENV (default .venv-torch, git-ignored). Progress
# goes to stderr, so `py=$(scripts/torch-venv.sh)` works.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TORCH_VENV:-.venv-torch}
if ! "$venv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
  echo "building $venv from scripts/requirements-golden.txt (a few GB) ..." >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --disable-pip-version-check -q -r scripts/requirements-golden.txt >&2
fi
echo "$(cd "$venv" && pwd)/bin/python"
