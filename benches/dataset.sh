#!/usr/bin/env bash
# End-to-end throughput of the `dataset` stage on a real corpus: every crate in
# cargo's registry cache (Rust, plus the C++ of -sys crates), the Python standard
# library with its site-packages, and Lean Batteries. Prints MB/s of source parsed
# and pairs per language.
#
#   flock /tmp/xtr-build.lock benches/dataset.sh [LEAN_DIR]
#
# The pipeline names no machine path: ${CARGO_HOME} and ${PYTHON_STDLIB} are
# resolved by the stage. A fresh store each time, so the run includes hashing
# the source trees for the key (cold file-hash cache) and the extraction.
set -euo pipefail
cd "$(dirname "$0")/.."
lean=$(realpath "${1:-../shared/datasets/lean/batteries}")
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/bench.toml" <<TOML
[pipeline]
name = "dataset-bench"

[stage.data]
kind = "dataset"
sources = [
  { lang = "rust", path = "\${CARGO_HOME}/registry/src" },
  { lang = "cpp", path = "\${CARGO_HOME}/registry/src" },
  { lang = "python", path = "\${PYTHON_STDLIB}" },
  { lang = "lean", path = "$lean" },
]
TOML
report() {
python3 - "$1" "$2" "$3" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
stage = run["stages"][0]
stats = json.load(open(stage["artifact"] + "/stats.json"))
wall = float(sys.argv[3]) - float(sys.argv[2])
mb = stats["bytes"] / 1e6
print(f"source parsed: {mb:.1f} MB in {stats['files']['parsed']} files "
      f"({stats['files']['seen']} seen)")
print(f"stage: {stage['seconds']:.1f} s -> {mb / stage['seconds']:.1f} MB/s; "
      f"whole run (key hashing included): {wall:.1f} s -> {mb / wall:.1f} MB/s")
print(f"pairs: {stats['pairs']}")
for lang, counts in stats["per_language"].items():
    print(f"  {lang:10} {counts['total']:7}  "
          f"({stats['bytes_per_language'].get(lang, 0) / 1e6:.1f} MB)")
print("files skipped:", {k: v for k, v in stats["files"].items()
                         if k not in ("seen", "parsed") and v})
print("filtered:", stats["filtered"], "deduped:", stats["deduped"])
PY
}
echo "== cold: new store, every source file hashed for the key"
start=$(date +%s.%N)
"${CARGO_TARGET_DIR:-target}/release/xtr-pipe" run "$work/bench.toml" --json > "$work/run.json"
end=$(date +%s.%N)
report "$work/run.json" "$start" "$end"
echo "== warm file-hash cache: a param changed (seed), sources unchanged"
start=$(date +%s.%N)
"${CARGO_TARGET_DIR:-target}/release/xtr-pipe" run "$work/bench.toml" --set data.seed=1 --json > "$work/run2.json"
end=$(date +%s.%N)
report "$work/run2.json" "$start" "$end"
