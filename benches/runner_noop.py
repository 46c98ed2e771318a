#!/usr/bin/env python3
"""Runner benchmarks: deciding what to rerun, xtr-pipe against DVC, in one run.

Two workloads:

`split` (the default; issue 1/6): a 10,000-file source tree (~200 MB) and a
50-stage pipeline whose stages depend on parts of it (and one on all of it).
After a first full run, times the no-op re-run, `status` and cold hashing (empty
file-hash cache), and DVC's no-op `dvc repro` on the same DAG.

    python3 benches/runner_noop.py [--reps 10] [--work DIR] [--no-dvc]

`chain` (issue 20): a 50-stage chain where every stage declares the whole source
tree as a dep and needs the previous stage (`echo i > $XTR_OUT/out.txt`), over
generated trees of 2-20 kB files, at each size given. For each size, in the same
run: the floor (`find src -printf '%s %T@'`, one stat per file), the no-op `run`
and `status` with their peak RSS, cold hashing, `status` after editing one file
and the rerun of all 50 stages after that edit (per-stage overhead), and DVC's
no-op `dvc repro` on the same DAG where its first `repro` finishes within
--dvc-limit seconds (default 600; not tried above a size where it did not;
--dvc-max-files skips DVC above a size).

    python3 benches/runner_noop.py chain --files 10000 100000 1000000 [--reps 5]

Generated trees are deleted when a size is done (--keep keeps them). DVC is
installed from PyPI into a throwaway venv under the work dir. Run it on a quiet
machine: nothing else building or testing.
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


def measure(cmd, cwd, env=None, timeout=None, out=None):
    """(wall seconds, peak RSS in MB) of one process, from wait4's rusage;
    None when it ran past `timeout`. `out`: a file for its stdout."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str),
                         stdout=out or subprocess.DEVNULL, stderr=subprocess.PIPE)
    if timeout is not None:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return None
        # Popen.wait reaped it; peak RSS is then not available per process.
        secs = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {cmd}\n{p.stderr.read().decode(errors='replace')[-3000:]}")
        return secs, float("nan")
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {cmd}\n{p.stderr.read().decode(errors='replace')[-3000:]}")
    return secs, usage.ru_maxrss / 1024


def timed(cmd, cwd, reps, env=None):
    """Median, min, max wall seconds and the largest peak RSS (MB) over `reps` runs."""
    runs = [measure(cmd, cwd, env) for _ in range(reps)]
    times = [r[0] for r in runs]
    return statistics.median(times), min(times), max(times), max(r[1] for r in runs)


def xtr_exe(args):
    if args.exe:
        return args.exe.resolve()
    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT, quiet=False)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "xtr-pipe"


def install_dvc(work: Path):
    venv = work / "venv"
    if not (venv / "bin" / "dvc").exists():
        print("installing dvc into a throwaway venv ...", flush=True)
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(venv / "bin" / "pip"), "install", "-q", "dvc"])
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    version = sh([str(venv / "bin" / "dvc"), "--version"], env=env).stdout.decode().strip()
    return str(venv / "bin" / "dvc"), env, version


# ---------------------------------------------------------------- split (issue 1/6)

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


def split(args):
    exe = xtr_exe(args)
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
        dvc, env, version = install_dvc(work)
        dvc_dir = work / "dvc"
        shutil.copytree(xtr / "src", dvc_dir / "src")
        write_dvc(dvc_dir)
        sh([dvc, "init", "--no-scm", "-q"], cwd=dvc_dir, env=env)
        sh([dvc, "config", "core.autostage", "false"], cwd=dvc_dir, env=env)
        t = time.perf_counter()
        sh([dvc, "repro", "-q"], cwd=dvc_dir, env=env)
        first = time.perf_counter() - t
        dvc_noop = timed([dvc, "repro", "-q"], dvc_dir, max(3, args.reps // 2), env=env)
        results.update({"dvc_version": version, "dvc_first_s": first, "dvc_noop_s": dvc_noop[0],
                        "ratio": dvc_noop[0] / noop[0]})
        print(f"dvc {version} first repro: {first:.1f} s")
        print(f"dvc no-op repro:        median {dvc_noop[0] * 1e3:.0f} ms (min {dvc_noop[1] * 1e3:.0f}, max {dvc_noop[2] * 1e3:.0f})")
        print(f"xtr-pipe is {results['ratio']:.0f}x faster at deciding nothing needs to run")
    print(json.dumps(results))


# ---------------------------------------------------------------- chain (issue 20)

FILES_PER_DIR = 100
DIRS_PER_DIR = 100


def chain_path(i):
    """File i's path under src/: aXXX/bYY/fZZZZZZZ.txt, 100 files a directory."""
    d = i // FILES_PER_DIR
    return f"a{d // DIRS_PER_DIR:03}/b{d % DIRS_PER_DIR:02}/f{i:07}.txt"


def make_chain_tree(src: Path, n: int, min_bytes: int, max_bytes: int):
    rng = random.Random(20)
    block = rng.randbytes(4 << 20)
    total = 0
    made = set()
    for i in range(n):
        rel = chain_path(i)
        parent = rel.rsplit("/", 1)[0]
        if parent not in made:
            (src / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        size = rng.randint(min_bytes, max_bytes)
        off = rng.randrange(0, len(block) - size)
        with open(src / rel, "wb") as f:
            f.write(block[off:off + size])
        total += size
    return total


def write_chain_xtr(work: Path):
    lines = ['[pipeline]\nname = "chain"\n']
    for i in range(STAGES):
        needs = f'needs = ["s{i - 1:02}"]\n' if i else ""
        lines.append(f'[stage.s{i:02}]\nkind = "cmd"\n{needs}'
                     f'cmd = "echo {i} > $XTR_OUT/out.txt"\ndeps = ["src"]\n')
    (work / "chain.toml").write_text("\n".join(lines))


def write_chain_dvc(work: Path):
    out = ["stages:"]
    for i in range(STAGES):
        deps = ["src"] + ([f"out/s{i - 1:02}.txt"] if i else [])
        out.append(f"  s{i:02}:\n    cmd: mkdir -p out && echo {i} > out/s{i:02}.txt")
        out.append("    deps:\n" + "\n".join(f"      - {d}" for d in deps))
        out.append(f"    outs:\n      - out/s{i:02}.txt")
    (work / "dvc.yaml").write_text("\n".join(out) + "\n")


def edit_one_file(src: Path, n: int, k: int):
    """Change one file's content (the middle one)."""
    rel = chain_path(n // 2)
    with open(src / rel, "ab") as f:
        f.write(f"edit {k}\n".encode())
    return rel


def chain_size(args, exe, n, dvc):
    work = args.work / f"chain-{n}"
    if work.exists():
        shutil.rmtree(work)
    xtr = work / "xtr"
    xtr.mkdir(parents=True)
    lo, hi = args.min_bytes, args.max_bytes
    print(f"\n== {n:,} files of {lo}-{hi} bytes: generating ...", flush=True)
    t = time.perf_counter()
    total = make_chain_tree(xtr / "src", n, lo, hi)
    write_chain_xtr(xtr)
    print(f"   {total / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s", flush=True)
    sh("sync")
    time.sleep(3)  # past the file-hash cache's racy window, as a real tree is
    reps = args.reps if n <= 100_000 else max(3, args.reps // 2)
    r = {"files": n, "bytes": total, "stages": STAGES}

    find = "find src -printf '%s %T@\\n' > /dev/null"
    sh(find, cwd=xtr)  # warm: page cache, dentries and inodes

    first = measure([str(exe), "run", "chain.toml", "-j", "2"], xtr)
    r["first_run_s"], r["first_run_rss_mb"] = first
    print(f"   first run (hash everything, run 50 stages): {first[0]:.2f} s, {first[1]:.0f} MB", flush=True)

    # Cold hashing: empty file-hash cache, files in the page cache.
    cold = []
    for _ in range(3 if n <= 100_000 else 1):
        for f in xtr.glob("artifacts/xtr.db*"):
            f.unlink()
        cold.append(measure([str(exe), "status", "chain.toml"], xtr))
    r["cold_status_s"] = statistics.median(c[0] for c in cold)
    r["cold_gb_s"] = total / r["cold_status_s"] / 1e9
    print(f"   cold hashing (`status`, empty cache): {r['cold_status_s']:.2f} s = {r['cold_gb_s']:.2f} GB/s", flush=True)
    sh([exe, "run", "chain.toml"], cwd=xtr)  # re-record the history after the wipe

    sh([exe, "run", "chain.toml"], cwd=xtr)  # warm
    # The floor (one stat per file, listing size and mtime), the no-op run and
    # status, interleaved so that load from elsewhere falls on all three alike.
    floor, noop, status = [], [], []
    for _ in range(reps):
        floor.append(measure(find, xtr))
        noop.append(measure([str(exe), "run", "chain.toml"], xtr))
        status.append(measure([str(exe), "status", "chain.toml"], xtr))
    med = lambda runs: statistics.median(r[0] for r in runs)
    r.update({"floor_s": med(floor), "floor_min_s": min(f[0] for f in floor),
              "noop_s": med(noop), "noop_min_s": min(x[0] for x in noop), "noop_max_s": max(x[0] for x in noop),
              "noop_rss_mb": max(x[1] for x in noop),
              "status_s": med(status), "status_rss_mb": max(x[1] for x in status)})
    f = r["floor_s"]
    print(f"   floor (find -printf '%s %T@'): {f * 1e3:.0f} ms", flush=True)
    print(f"   no-op run: {r['noop_s'] * 1e3:.0f} ms ({r['noop_s'] / f:.2f}x floor), {r['noop_rss_mb']:.0f} MB; "
          f"status: {r['status_s'] * 1e3:.0f} ms ({r['status_s'] / f:.2f}x), {r['status_rss_mb']:.0f} MB", flush=True)

    # One file edited: the decision, then the rerun of all 50 stages (a floor
    # measured next to each decision). Per stage: the run's execution phase (its
    # report's `seconds`, after the plan) over 50. The same edit and rerun on a
    # 1-file tree, interleaved, is the reference for what running 50 stages costs
    # anyway (a process and six fsyncs each: the disk's latency, not the tree's).
    def rerun(cwd, runs, execs):
        with open(work / "rerun.json", "w+") as f:
            runs.append(measure([str(exe), "run", "chain.toml", "--json"], cwd, out=f))
            f.seek(0)
            execs.append(json.load(f)["seconds"])
    tiny = work / "tiny"
    (tiny / "src").mkdir(parents=True)
    (tiny / "src" / "one.txt").write_text("one\n")
    write_chain_xtr(tiny)
    sh([exe, "run", "chain.toml"], cwd=tiny)
    edited, reruns, execs, floor2, tiny_reruns, tiny_execs = [], [], [], [], [], []
    for k in range(reps if n <= 100_000 else 2):
        edit_one_file(xtr / "src", n, k)
        floor2.append(measure(find, xtr))
        edited.append(measure([str(exe), "status", "chain.toml"], xtr))
        rerun(xtr, reruns, execs)
        with open(tiny / "src" / "one.txt", "a") as f:
            f.write(f"edit {k}\n")
        rerun(tiny, tiny_reruns, tiny_execs)
    r["edit_floor_s"] = med(floor2)
    r["edit_status_s"] = med(edited)
    r["edit_status_rss_mb"] = max(e[1] for e in edited)
    r["edit_rerun_s"] = med(reruns)
    r["edit_rerun_rss_mb"] = max(e[1] for e in reruns)
    r["per_stage_rerun_ms"] = statistics.median(execs) / STAGES * 1e3
    r["tiny_per_stage_rerun_ms"] = statistics.median(tiny_execs) / STAGES * 1e3
    print(f"   one file edited: status {r['edit_status_s'] * 1e3:.0f} ms ({r['edit_status_s'] / r['edit_floor_s']:.2f}x "
          f"floor of {r['edit_floor_s'] * 1e3:.0f} ms); rerun of 50 stages {r['edit_rerun_s']:.2f} s, "
          f"{r['per_stage_rerun_ms']:.1f} ms a stage once planned (1-file tree: {r['tiny_per_stage_rerun_ms']:.1f} ms)",
          flush=True)

    if dvc and n <= args.dvc_max_files and args.dvc_gave_up:
        r["dvc_skipped"] = f"did not finish at {args.dvc_gave_up:,} files"
        print(f"   dvc: not tried ({r['dvc_skipped']})", flush=True)
    elif dvc and n <= args.dvc_max_files:
        dvc_exe, env, version = dvc
        dvc_dir = work / "dvc"
        dvc_dir.mkdir()
        shutil.copytree(xtr / "src", dvc_dir / "src")
        write_chain_dvc(dvc_dir)
        sh([dvc_exe, "init", "--no-scm", "-q"], cwd=dvc_dir, env=env)
        sh([dvc_exe, "config", "core.autostage", "false"], cwd=dvc_dir, env=env)
        r["dvc_version"] = version
        first = measure([dvc_exe, "repro", "-q"], dvc_dir, env, timeout=args.dvc_limit)
        if first is None:
            r["dvc_first_s"] = None
            args.dvc_gave_up = n
            print(f"   dvc {version}: first repro did not finish within {args.dvc_limit} s", flush=True)
        else:
            r["dvc_first_s"] = first[0]
            left = args.dvc_limit
            dvc_noop = measure([dvc_exe, "repro", "-q"], dvc_dir, env, timeout=left)
            if dvc_noop is None:
                r["dvc_noop_s"] = None
                args.dvc_gave_up = n
                print(f"   dvc {version}: first repro {first[0]:.1f} s, no-op repro past {left} s", flush=True)
            else:
                times = [dvc_noop[0]] + [measure([dvc_exe, "repro", "-q"], dvc_dir, env)[0]
                                         for _ in range(2 if dvc_noop[0] < 60 else 0)]
                r["dvc_noop_s"] = statistics.median(times)
                r["dvc_ratio"] = r["dvc_noop_s"] / r["noop_s"]
                print(f"   dvc {version}: first repro {first[0]:.1f} s, no-op repro {r['dvc_noop_s']:.2f} s "
                      f"= {r['dvc_ratio']:.0f}x xtr-pipe's no-op", flush=True)
        shutil.rmtree(dvc_dir)
    if not args.keep:
        shutil.rmtree(work)
    return r


def chain(args):
    exe = xtr_exe(args)
    args.work.mkdir(parents=True, exist_ok=True)
    print(sh(["df", "-h", str(args.work)]).stdout.decode(), end="")
    dvc = None if args.no_dvc else install_dvc(args.work)
    args.dvc_gave_up = None  # DVC is not tried above a size it did not finish
    results = [chain_size(args, exe, n, dvc) for n in args.files]
    print("\n| files | MB | floor | no-op `run` | `status` | peak RSS (no-op) | status after 1-file edit "
          "| rerun of 50 stages after it | per stage (1-file tree) | cold hashing | DVC no-op `repro` |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        f = r["floor_s"]
        dvc_cell = "not run"
        if "dvc_skipped" in r:
            dvc_cell = f"not tried ({r['dvc_skipped']})"
        elif "dvc_first_s" in r:
            if r["dvc_first_s"] is None:
                dvc_cell = f"first `repro` past {args.dvc_limit} s"
            elif r.get("dvc_noop_s") is None:
                dvc_cell = f"no-op past {args.dvc_limit} s"
            else:
                dvc_cell = f"{r['dvc_noop_s']:.2f} s ({r['dvc_ratio']:.0f}x)"
        print(f"| {r['files']:,} | {r['bytes'] / 1e6:.0f} | {f * 1e3:.0f} ms "
              f"| {r['noop_s'] * 1e3:.0f} ms ({r['noop_s'] / f:.2f}x) "
              f"| {r['status_s'] * 1e3:.0f} ms ({r['status_s'] / f:.2f}x) "
              f"| {max(r['noop_rss_mb'], r['status_rss_mb']):.0f} MB "
              f"| {r['edit_status_s'] * 1e3:.0f} ms ({r['edit_status_s'] / r['edit_floor_s']:.2f}x) "
              f"| {r['edit_rerun_s']:.2f} s | {r['per_stage_rerun_ms']:.1f} ms ({r['tiny_per_stage_rerun_ms']:.1f} ms) "
              f"| {r['cold_gb_s']:.2f} GB/s | {dvc_cell} |")
    print(json.dumps(results))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?", default="split", choices=["split", "chain"])
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (split: 10, chain: 5)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xtr-bench-runner"))
    ap.add_argument("--no-dvc", action="store_true")
    ap.add_argument("--exe", type=Path, help="the xtr-pipe binary to time (default: build this checkout)")
    ap.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                    help="chain: tree sizes")
    ap.add_argument("--min-bytes", type=int, default=2_000, help="chain: smallest file")
    ap.add_argument("--max-bytes", type=int, default=20_000, help="chain: largest file")
    ap.add_argument("--dvc-limit", type=int, default=600, help="chain: seconds DVC's repro may take")
    ap.add_argument("--dvc-max-files", type=int, default=1_000_000, help="chain: no DVC above this size")
    ap.add_argument("--keep", action="store_true", help="chain: keep the generated trees")
    args = ap.parse_args()
    if args.workload == "split":
        args.reps = args.reps or 10
        split(args)
    else:
        args.reps = args.reps or 5
        chain(args)


if __name__ == "__main__":
    main()
