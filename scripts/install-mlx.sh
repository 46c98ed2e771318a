#!/usr/bin/env bash
# Installs what the MLX binding builds and links against, idempotently:
#   - Linux: Debian's OpenBLAS (the `-lopenblas` dev symlink; MLX's own bundled
#     reference BLAS is ~35x slower) and SLEEF (vector math for xtr-pipe's own
#     CPU kernels, src/mlx/cpu/), then the `mlx-cpu` wheel (libmlx + headers).
#   - macOS: the `mlx` wheel family ships libmlx with Metal + Accelerate.
# The wheel version is pinned: MLX's C++ API has no stable ABI, so the shim must
# be built and run against the same version.
set -euo pipefail

MLX_VERSION="${MLX_VERSION:-0.32.4}"
PYTHON="${PYTHON:-python3}"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

case "$(uname -s)" in
  Linux)
    missing=()
    for pkg in libopenblas-dev libsleef-dev; do
      if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
        echo "$pkg: already installed"
      else
        missing+=("$pkg")
      fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
      sudo_if_needed apt-get update
      sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
    WHEEL="mlx-cpu"
    ;;
  Darwin)
    WHEEL="mlx-metal"
    ;;
  *)
    echo "unsupported OS: $(uname -s)" >&2
    exit 1
    ;;
esac

installed="$("$PYTHON" -m pip show "$WHEEL" 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed" = "$MLX_VERSION" ]; then
  echo "$WHEEL $MLX_VERSION: already installed"
else
  "$PYTHON" -m pip install --disable-pip-version-check "$WHEEL==$MLX_VERSION"
fi

# Print where it landed (what build.rs will find; export MLX_DIR to override).
# Run from / so a local `mlx/` folder cannot shadow the namespace package.
MLX_DIR="$(cd / && "$PYTHON" -c 'import mlx; print(list(mlx.__path__)[0])')"
test -f "$MLX_DIR/lib/libmlx.so" -o -f "$MLX_DIR/lib/libmlx.dylib"
test -f "$MLX_DIR/include/mlx/mlx.h"
echo "MLX_DIR=$MLX_DIR"
