#!/usr/bin/env bash
# The data-parallel benchmark on a machine with 2 NVIDIA GPUs (BENCHMARKS.md):
# the train stage of pipelines/dist-bench.toml at gpus = 1 and 2, batch 64 and
# 256 per GPU, one line per run: samples/s over the whole run and the median of
# the steps after the fifth, the validation loss; with XTR_PIPE_TIME_SYNC=1
# also rank 0's share of step time spent in the all-sum (timing it costs a host
# round trip per update, so the throughput runs leave it off). BIN is xtr-pipe built against the mlx-cpu wheel and run
# against the CUDA libmlx (see scripts/gpu-check.sh); PIPELINE defaults to
# pipelines/dist-bench.toml.
#
#   scripts/bench-dist.sh BIN [PIPELINE]
set -uo pipefail
bin=${1:?usage: bench-dist.sh BIN [PIPELINE]}
pipe=${2:-$(dirname "$0")/../pipelines/dist-bench.toml}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
one() { # NAME SETTINGS...: one forced run of the train stage, summarised
  local name=$1; shift
  local sets=(); for s in "$@"; do sets+=(--set "train.$s"); done
  "$bin" run "$pipe" --force train "${sets[@]}" --json > "/tmp/$name.json" 2> "/tmp/$name.err"
  python3 - "$name" "/tmp/$name.json" <<'PY'
import json, re, statistics, sys
name, path = sys.argv[1], sys.argv[2]
try:
    run = json.load(open(path))
except Exception as e:
    print(name, "no report:", e); sys.exit()
st = next(s for s in run["stages"] if s["name"] == "train")
if st["status"] != "ran":
    print(name, st["status"], st.get("error")); sys.exit()
t = json.load(open(st["artifact"] + "/train.json"))
log = open(st["log"]).read()
rates = [float(m) for m in re.findall(r"^step \d+/\d+ .* ([\d.]+) samples/s", log, re.M)]
steady = statistics.median(rates[5:]) if len(rates) > 6 else float("nan")
sync = [float(m) for m in re.findall(r"^step .* sync ([\d.]+) ms", log, re.M)][5:]
print(json.dumps({"run": name, "ranks": t["ranks"], "batch": t["config"]["batch_size"],
  "grad_accum": t["config"]["grad_accum"], "steps": t["steps"],
  "samples_per_s_run": round(t["samples_per_s"], 1), "samples_per_s_steady": round(steady, 1),
  "sync_share": round(t["sync_seconds"] / max(t["train_seconds"], 1e-9), 4) if t.get("sync_seconds") is not None else None,
  "sync_ms_median": round(statistics.median(sync), 2) if sync else None,
  "sync_ms_min": round(min(sync), 2) if sync else None,
  "val_loss": t["val_loss"], "final_loss": t["final_loss"], "stage_seconds": round(st["seconds"], 1)}))
PY
}
"$bin" run "$pipe" --only dataset --json > /tmp/dataset.json 2>/tmp/dataset.err || cat /tmp/dataset.err
# A throw-away warm-up run: on a fresh machine the first runs' steady rate is
# 20-35% below the same run repeated (beyond MLX's kernel compile), which
# would favour whatever runs later. WARMUP=0 skips it.
if [ "${WARMUP:-1}" != 0 ]; then
  warm=(); for s in ${EXTRA:-}; do warm+=(--set "train.$s"); done
  "$bin" run "$pipe" --force train --set train.max_steps=20 "${warm[@]}" --json > /tmp/warmup.json 2> /tmp/warmup.err \
    || { echo "warm-up run failed:"; tail -5 /tmp/warmup.err; }
fi
for b in ${BATCHES:-64 256}; do
  # EXTRA: more train settings for every run (e.g. "max_doc_tokens=64"); TAG names them.
  for g in ${GPUS:-1 2}; do one "b${b}-g${g}${TAG:-}" "batch_size=$b" "gpus=$g" ${EXTRA:-}; done
done
