#!/usr/bin/env python3
"""Runner benchmark: deciding what to rerun, xtr-pipe against DVC, in one run.

Generates a 10,000-file source tree (~200 MB) and a 50-stage pipeline whose
stages depend on parts of it (and one on all of it), once as an xtr-pipe TOML
file and once as an equivalent dvc.yaml. After a first full run of each, it
times the no-op re-run (nothing changed) and xtr-pipe's cold hashing (empty
file-hash cache), and prints the figures and the ratio.

    python3 benches/runner_noop.py [--reps 10] [--work DIR] [--no-dvc]

DVC is installed from PyPI into a throwaway venv under the work dir. Run it on
a quiet machine: nothing else building or testing.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES, DIRS, STAGES = 10_000, 100, 50
FILE_BYTES = 20_000  # 10,000 x 20 kB = 200 MB


def sh(cmd, cwd=None, env=None, quiet=True):
    out = subprocess.run(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str),
                         stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {cmd}\n{(out.stdout or b'').decode(errors='replace')[-3000:]}")
    return out


def timed(cmd, cwd, reps, env=None):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        sh(cmd, cwd=cwd, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def make_tree(src: Path):
    rng = random.Random(42)
    block = rng.randbytes(1 << 20)
    for d in range(DIRS):
        (src / f"d{d:03}").mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        off = rng.randrange(0, len(block) - FILE_BYTES)
        (src / f"d{i % DIRS:03}" / f"f{i:05}.txt").write_bytes(block[off:off + FILE_BYTES])


def stage_deps(i):
    # Stage i depends on two of the hundred directories; the last on the whole tree.
    return ["src"] if i == STAGES - 1 else [f"src/d{2 * i:03}", f"src/d{2 * i + 1:03}"]


def write_xtr(work: Path):
    lines = ['[pipeline]\nname = "bench"\n']
    for i in range(STAGES):
        needs = f'needs = ["s{i - 1:02}"]\n' if i % 5 else ""
        lines.append(f'[stage.s{i:02}]\nkind = "cmd"\n{needs}cmd = "echo {i} > $XTR_OUT/o"\n'
                     f'deps = {json.dumps(stage_deps(i))}\n')
    (work / "bench.toml").write_text("\n".join(lines))


def write_dvc(work: Path):
    out = ["stages:"]
    for i in range(STAGES):
        deps = stage_deps(i) + ([f"out/s{i - 1:02}"] if i % 5 else [])
        out.append(f"  s{i:02}:\n    cmd: mkdir -p out && echo {i} > out/s{i:02}")
        out.append("    deps:\n" + "\n".join(f"      - {d}" for d in deps))
        out.append(f"    outs:\n      - out/s{i:02}")
    (work / "dvc.yaml").write_text("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/xtr-bench-runner"))
    ap.add_argument("--no-dvc", action="store_true")
    args = ap.parse_args()

    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT, quiet=False)
    exe = ROOT / "target" / "release" / "xtr-pipe"
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    (work / "xtr").mkdir(parents=True)
    print(f"generating {FILES} files ({FILES * FILE_BYTES / 1e6:.0f} MB) ...", flush=True)
    make_tree(work / "xtr" / "src")
    write_xtr(work / "xtr")
    xtr = work / "xtr"
    # The file-hash cache never trusts a file modified in the last 2 s (a write in
    # the same timestamp tick could go unseen); let the fresh tree age past that,
    # as a real source tree has.
    time.sleep(3)

    sh([exe, "run", "bench.toml", "-j", "2"], cwd=xtr)
    # (b) cold hashing: empty file-hash cache, files in the page cache.
    cold = []
    os.sync()  # let the first run's writeback finish before timing reads
    for _ in range(5):
        for f in xtr.glob("artifacts/xtr.db*"):
            f.unlink()
        t = time.perf_counter()
        sh([exe, "status", "bench.toml"], cwd=xtr)
        cold.append(time.perf_counter() - t)
    cold_s = statistics.median(cold)
    sh([exe, "run", "bench.toml"], cwd=xtr)  # re-record history after the cache wipe
    # (a) no-op re-run.
    sh([exe, "run", "bench.toml"], cwd=xtr)  # warm: page cache, SQLite pages
    noop = timed([str(exe), "run", "bench.toml"], xtr, args.reps)
    status = timed([str(exe), "status", "bench.toml"], xtr, args.reps)
    results = {
        "files": FILES, "bytes": FILES * FILE_BYTES, "stages": STAGES,
        "xtr_noop_s": noop[0], "xtr_noop_min_s": noop[1], "xtr_noop_max_s": noop[2],
        "xtr_status_s": status[0],
        "xtr_cold_hash_s": cold_s, "xtr_cold_hash_gb_s": FILES * FILE_BYTES / cold_s / 1e9,
    }
    print(f"xtr-pipe no-op run:     median {noop[0] * 1e3:.1f} ms (min {noop[1] * 1e3:.1f}, max {noop[2] * 1e3:.1f}, n={args.reps})")
    print(f"xtr-pipe status:        median {status[0] * 1e3:.1f} ms")
    print(f"xtr-pipe cold hashing:  {cold_s:.3f} s for {FILES * FILE_BYTES / 1e6:.0f} MB = {results['xtr_cold_hash_gb_s']:.2f} GB/s")

    if not args.no_dvc:
        venv = work / "venv"
        print("installing dvc into a throwaway venv ...", flush=True)
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(venv / "bin" / "pip"), "install", "-q", "dvc"])
        dvc_dir = work / "dvc"
        shutil.copytree(xtr / "src", dvc_dir / "src")
        write_dvc(dvc_dir)
        dvc = str(venv / "bin" / "dvc")
        env = dict(os.environ, DVC_NO_ANALYTICS="1")
        sh([dvc, "init", "--no-scm", "-q"], cwd=dvc_dir, env=env)
        sh([dvc, "config", "core.autostage", "false"], cwd=dvc_dir, env=env)
        t = time.perf_counter()
        sh([dvc, "repro", "-q"], cwd=dvc_dir, env=env)
        first = time.perf_counter() - t
        dvc_noop = timed([dvc, "repro", "-q"], dvc_dir, max(3, args.reps // 2), env=env)
        version = sh([dvc, "--version"], env=env).stdout.decode().strip()
        results.update({"dvc_version": version, "dvc_first_s": first, "dvc_noop_s": dvc_noop[0],
                        "ratio": dvc_noop[0] / noop[0]})
        print(f"dvc {version} first repro: {first:.1f} s")
        print(f"dvc no-op repro:        median {dvc_noop[0] * 1e3:.0f} ms (min {dvc_noop[1] * 1e3:.0f}, max {dvc_noop[2] * 1e3:.0f})")
        print(f"xtr-pipe is {results['ratio']:.0f}x faster at deciding nothing needs to run")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
