#!/usr/bin/env bash
# Installs what building xtr-pipe needs beyond cargo. Idempotent; safe to rerun.
set -euo pipefail
echo "setup: nothing beyond the Rust toolchain is needed yet"
