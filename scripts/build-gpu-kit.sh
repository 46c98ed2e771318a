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
cp -L "$(ldd "${CARGO_TARGET_DIR:-target}/release/xtr-pipe" | awk '/libsleef\.so/ {print $3}')" "$out/"
# xz-compressed (~4x): a device call carries at most 64 MiB, and each stripped
# binary is ~50 MB. Carry xtr-pipe-tests.xz with the kit's part a and
# xtr-pipe.xz + libsleef with part b; gpu-check.sh unpacks them.
rm -f "$out/xtr-pipe" "$out/xtr-pipe-tests"
strip -o "$out/xtr-pipe" "${CARGO_TARGET_DIR:-target}/release/xtr-pipe"
strip -o "$out/xtr-pipe-tests" "$tests"
xz -T2 -6 -f "$out/xtr-pipe" "$out/xtr-pipe-tests"
ls -la "$out"
