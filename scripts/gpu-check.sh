#!/usr/bin/env bash
# The whole GPU check, in one command, on a Linux + NVIDIA machine where MLX's CUDA
# backend is installed (the mlx-cuda-13 wheel of the pinned version; on the lent
# H100 machine, shared/tools/mlx-cuda-kit.sh's install.sh puts it there):
#
#   scripts/gpu-check.sh BIN_DIR [PYTHON]
#
# BIN_DIR holds `xtr-pipe` and `xtr-pipe-tests` (the lib test binary; or their .xz), built on a
# CPU machine against the mlx-cpu wheel of the same version (scripts/build-gpu-kit.sh);
# they run against the CUDA libmlx through LD_LIBRARY_PATH. PYTHON (default
# /opt/torch/.venv/bin/python) runs the PyTorch side of the benchmarks.
# GPU_CHECK_PARTS (default parity,xtr,torch) picks the parts: on an H100 parity
# and xtr take about a minute together, torch (torch.compile at three batch
# sizes) five to eight, so a 10-minute device call should run torch on its own.
# More parts: `dropout` (batch 256 bf16 with our dropout kernels, with MLX's
# bernoulli dropout, and without dropout), `stage` (pipelines/profile.toml through
# `xtr-pipe run`: the profile stage kind with device = "auto" lands on the GPU)
# and `profile` (the batch-256 bf16 step under Nsight Compute, one kernel at a
# time: GPU time per kernel, as a CSV in /tmp/xtr-step-kernels.csv).
# The parity part needs all-MiniLM-L6-v2: XTR_MINILM_DIR, or the pip package.
# The first MLX run on a fresh machine compiles its CUDA kernels (about 2 min).
set -uo pipefail
bin=${1:?usage: gpu-check.sh BIN_DIR [PYTHON]}; py=${2:-/opt/torch/.venv/bin/python}
libdir=${MLX_LIBDIR:-$(cat /root/mlxkit/libdir 2>/dev/null)}
for f in "$bin"/*.xz; do [ -e "$f" ] && xz -d -k -f "$f" && chmod +x "${f%.xz}"; done
export LD_LIBRARY_PATH="$libdir:$(cd "$bin" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== libmlx: $(ldd "$bin/xtr-pipe" | grep libmlx)"
echo "== parity on the GPU (MLX_ENABLE_TF32=0: MLX runs f32 GEMMs as TF32 by default)"
parts=",${GPU_CHECK_PARTS:-parity,xtr,torch},"
[[ $parts == *,parity,* ]] &&
MLX_ENABLE_TF32=0 "$bin/xtr-pipe-tests" --test-threads 1 --nocapture gpu_ 2>&1 | grep -E "tiny_|minilm|test result|panicked"
[[ $parts == *,xtr,* ]] && for dtype in f32 bf16; do
  echo "== xtr-pipe train step, t5-base-random, $dtype (MLX default: TF32 for f32 GEMMs)"
  for b in 12 64 256; do
    "$bin/xtr-pipe" bench train-step --model t5-base-random --device gpu --batch "$b" --steps 10 --dtype "$dtype" --json | tr -d '\n '; echo
  done
done
step() { "$bin/xtr-pipe" bench train-step --model t5-base-random --device gpu --steps 10 --json "$@" | tr -d '\n '; echo; }
if [[ $parts == *,dropout,* ]]; then
  echo "== batch 256 bf16: our dropout kernel / MLX bernoulli dropout / no dropout"
  step --batch 256 --dtype bf16
  XTR_GPU_KERNELS=off step --batch 256 --dtype bf16
  step --batch 256 --dtype bf16 --dropout false
fi
if [[ $parts == *,stage,* ]]; then
  echo "== pipelines/profile.toml (kind = \"profile\", device = \"auto\")"
  "$bin/xtr-pipe" run pipelines/profile.toml --json |
    python3 -c 'import json,sys
for s in json.load(sys.stdin)["stages"]:
    print(s["name"], s["status"], json.dumps(s.get("metrics")))'
fi
if [[ $parts == *,profile,* ]]; then
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  if [ -x "$ncu" ]; then
    echo "== ncu: batch 256 bf16, GPU time per kernel (two steps) -> /tmp/xtr-step-kernels.csv"
    "$ncu" --csv --metrics gpu__time_duration.sum "$bin/xtr-pipe" bench train-step \
      --model t5-base-random --device gpu --batch 256 --dtype bf16 --steps 1 --warmup 1 \
      --json > /tmp/xtr-step-kernels.csv && wc -l /tmp/xtr-step-kernels.csv
  else
    echo "== profile: Nsight Compute (ncu) is not on this machine"
  fi
fi
if [[ $parts == *,torch,* ]] && [ -x "$py" ]; then
  echo "== PyTorch train step, t5-base-random"
  for b in 12 64 256; do
    "$py" scripts/bench_train_step_torch.py --model t5-base-random --device cuda --batch "$b" --steps 10 \
      --modes eager-f32,compiled-bf16 --json
  done
fi
