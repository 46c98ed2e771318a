#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine, here on the CPU machine:
# the release `xtr-pipe` and the library's test binary, stripped, in DIR
# (default .mlxkit/bin, git-ignored). Both link the mlx-cpu wheel's libmlx and run
# against the CUDA libmlx of the same version through LD_LIBRARY_PATH, with the
# libsleef they link copied beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.mlxkit/bin}
mkdir -p "$out"
cargo build --release --quiet
tests=$(cargo test --release --lib --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["lib"] and m.get("executable"):
        print(m["executable"])')
# libsleef (the CPU kernels' vector math) may be absent on the GPU machine.
cp -L "$(ldd target/release/xtr-pipe | awk '/libsleef\.so/ {print $3}')" "$out/"
strip -o "$out/xtr-pipe" target/release/xtr-pipe
strip -o "$out/xtr-pipe-tests" "$tests"
ls -la "$out"
