#!/usr/bin/env bash
# The BLAS study of BENCHMARKS.md ("the BLAS question", issue 21): cblas_sgemm on
# the MiniLM step's shapes, 2 threads, with the BLAS the build links (Debian's
# OpenBLAS, under its pinned Haswell kernels and under SkylakeX), then PyTorch's
# own torch.mm on the same shapes in the same run.
#
#   benches/blas_shapes.sh [PYTHON_WITH_TORCH]
#
# Another library: BLAS_LIBS="-L DIR -lmkl_rt" (PyPI mkl) or BLAS_LIBS=-lblis
# (Debian libblis4-pthread), with its thread variable (MKL_NUM_THREADS=2,
# BLIS_NUM_THREADS=2).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-$(bash scripts/torch-venv.sh)}
bin=$(mktemp -d)/blas_shapes
gcc -O2 benches/blas_shapes.c ${BLAS_LIBS:--lopenblas} -o "$bin"
for coretype in Haswell SkylakeX; do
  echo "== OPENBLAS_CORETYPE=$coretype"
  OPENBLAS_CORETYPE=$coretype OPENBLAS_NUM_THREADS=2 "$bin"
done
echo "== torch.mm"
"$py" - <<'PY'
import time
import torch
torch.set_num_threads(2)
for m, n, k in [(1536, 384, 384), (1536, 1536, 384), (1536, 384, 1536), (384, 384, 384), (1024, 1024, 1024)]:
    a, b = torch.randn(m, k), torch.randn(k, n)
    best, t0, runs = 1e9, time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5 or runs < 5:
        t = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - t); runs += 1
    print(f"{m:5d} {n:5d} {k:5d} NN  {2 * m * n * k / best / 1e9:7.1f} GFLOP/s")
PY
