#!/usr/bin/env bash
# The data-parallel benchmark on a machine with 2 NVIDIA GPUs (BENCHMARKS.md):
# the train stage of pipelines/dist-bench.toml at gpus = 1 and 2.
#
# RUNS lists the runs of each batch size as GxA (G GPUs, grad_accum A), by
# default "2x2 1x1 1x2 1x2 1x1 2x2":
#   - 2x2 against 1x1: each GPU takes one micro-batch of `batch_size` per
#     update (the per-GPU batch fixed: weak scaling);
#   - 2x2 against 1x2: the same global batch on one GPU (the same model under
#     the same key: strong scaling, and the validation losses to compare).
# The order is mirrored, after a throw-away warm-up run, because a host's speed
# drifts from run to run. One JSON line per run: samples/s (the median of the
# updates after the fifth), the validation loss, and per rank the medians of
# the XTR_PIPE_TRACE timeline (`calls_ms` gauges the host's speed: the same
# graph building in every run of one batch size and grad_accum per rank).
# With XTR_PIPE_TIME_SYNC=1 in the environment it also reports rank 0's time
# in the all-sum (one host round trip more per update).
#
# BIN is xtr-pipe built against the mlx-cpu wheel and run against the CUDA
# libmlx (see scripts/gpu-check.sh).
#
#   BATCHES="64 256" STEPS=120 EXTRA="model=MINILM_DIR" scripts/bench-dist.sh BIN [PIPELINE]
set -uo pipefail
bin=${1:?usage: bench-dist.sh BIN [PIPELINE]}
pipe=${2:-$(dirname "$0")/../pipelines/dist-bench.toml}
work=${WORK:-/tmp/bench-dist}
mkdir -p "$work"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
extra=(); for s in ${EXTRA:-}; do extra+=(--set "train.$s"); done

one() { # NAME SETTINGS...: one forced run of the train stage, summarised
  local name=$1; shift
  local sets=(); for s in "$@"; do sets+=(--set "train.$s"); done
  rm -rf "$work/$name.trace"
  XTR_PIPE_TRACE="$work/$name.trace" "$bin" run "$pipe" --force train "${sets[@]}" "${extra[@]}" \
    --json > "$work/$name.json" 2> "$work/$name.err"
  python3 - "$name" "$work/$name.json" "$work/$name.trace" <<'PY'
import glob, json, os, re, statistics, sys
name, path, trace = sys.argv[1:4]
try:
    run = json.load(open(path))
except Exception as e:
    print(json.dumps({"run": name, "error": f"no report: {e}"})); sys.exit()
st = next(s for s in run["stages"] if s["name"] == "train")
if st["status"] != "ran":
    print(json.dumps({"run": name, "error": st.get("error") or st["status"]})); sys.exit()
t = json.load(open(st["artifact"] + "/train.json"))
log = open(st["log"]).read()
rates = [float(m) for m in re.findall(r"^step \d+/\d+ .* ([\d.]+) samples/s", log, re.M)]
sync = [float(m) for m in re.findall(r"^step .* sync ([\d.]+) ms", log, re.M)][5:]
line = {"run": name, "ranks": t["ranks"], "batch": t["config"]["batch_size"],
        "grad_accum": t["config"]["grad_accum"], "steps": t["steps"],
        "samples_per_s": round(statistics.median(rates[5:]), 1) if len(rates) > 6 else None,
        "val_loss": t["val_loss"], "train_seconds": round(t["train_seconds"], 1)}
if sync:
    line["sync_ms_median"] = round(statistics.median(sync), 2)
    line["sync_share"] = round(t["sync_seconds"] / max(t["train_seconds"], 1e-9), 4)
keys = ("calls_ms", "launch_ms", "land_ms", "period_ms")
for f in sorted(glob.glob(trace + "/train-rank*.jsonl")):
    rows = [json.loads(l) for l in open(f)][5:]
    if rows:
        rank = os.path.basename(f)[len("train-rank"):-len(".jsonl")]
        line["rank" + rank] = {k: round(statistics.median(r[k] for r in rows), 2) for k in keys}
print(json.dumps(line), flush=True)
PY
}

"$bin" run "$pipe" --only dataset "${extra[@]}" --json > "$work/dataset.json" 2> "$work/dataset.err" || cat "$work/dataset.err"
for b in ${BATCHES:-64 256}; do
  # A throw-away warm-up run: a fresh machine's first runs are slower (MLX
  # compiles its kernels; new padded shapes are traced), which would favour
  # whatever runs later. WARMUP=0 skips it.
  if [ "${WARMUP:-1}" != 0 ]; then
    "$bin" run "$pipe" --force train --set train.max_steps=20 --set train.batch_size="$b" "${extra[@]}" \
      --json > "$work/warmup.json" 2> "$work/warmup.err" || { echo "warm-up run failed:"; tail -5 "$work/warmup.err"; }
  fi
  i=0
  for spec in ${RUNS:-2x2 1x1 1x2 1x2 1x1 2x2}; do
    i=$((i + 1))
    one "b$b-g${spec%x*}a${spec#*x}-$i${TAG:-}" "batch_size=$b" "gpus=${spec%x*}" "grad_accum=${spec#*x}" \
      "max_steps=${STEPS:-120}"
  done
done
