#!/usr/bin/env bash
# The README's second command: install what is missing (as scripts/quickstart.sh
# does), then run the whole test suite. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test "$@"
