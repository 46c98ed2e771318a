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
MLX_ENABLE_TF32=0 "$bin/xtr-pipe-tests" --test-threads 1 --nocapture gpu_ 2>&1 | grep -E "tiny_|test result|panicked"
[[ $parts == *,xtr,* ]] && for dtype in f32 bf16; do
  echo "== xtr-pipe train step, t5-base-random, $dtype (MLX default: TF32 for f32 GEMMs)"
  for b in 12 64 256; do
    "$bin/xtr-pipe" bench train-step --model t5-base-random --device gpu --batch "$b" --steps 10 --dtype "$dtype" --json | tr -d '\n '; echo
  done
done
if [[ $parts == *,torch,* ]] && [ -x "$py" ]; then
  echo "== PyTorch train step, t5-base-random"
  for b in 12 64 256; do
    "$py" scripts/bench_train_step_torch.py --model t5-base-random --device cuda --batch "$b" --steps 10 \
      --modes eager-f32,compiled-bf16 --json
  done
fi
