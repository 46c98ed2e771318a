#!/usr/bin/env bash
# Installs what building xtr-pipe needs beyond cargo: OpenBLAS and the pinned MLX
# wheel (see scripts/install-mlx.sh). Idempotent; CI runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-mlx.sh
