#!/usr/bin/env python3
"""PyTorch peer of `xtr-pipe bench encode`: inference throughput (tokens/s) of the
same multi-vector encoder (model built as in bench_train_step_torch.py, without
LoRA), eval mode, f32, random ids, median of the timed passes.

    python3 scripts/bench_encode_torch.py --model DIR|t5-base-random \\
        [--batch 32 --len 128 --steps 10 --warmup 2 --threads 2 --device cpu|cuda] [--json]
"""
import argparse
import json
import statistics
import time

import torch

import bench_train_step_torch as peer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    if a.model == peer.T5_BASE_RANDOM:
        encoder, head, vocab, _ = peer.random_t5()
    else:
        encoder, head, vocab, _ = peer.load_dir(a.model)
    model = peer.MultiVector(encoder, head).to(a.device).eval()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, vocab, (a.batch, a.len), generator=g).to(a.device)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.steps):
            t = time.perf_counter()
            model(ids, mask)
            if a.device != "cpu":
                torch.cuda.synchronize()
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    out = {"framework": "pytorch", "torch": torch.__version__, "model": a.model, "device": a.device,
           "threads": torch.get_num_threads(), "batch": a.batch, "len": a.len, "steps": a.steps,
           "step_seconds": median, "tokens_per_s": a.batch * a.len / median}
    print(json.dumps(out) if a.json else f"{a.model}: {out['tokens_per_s']:.0f} tokens/s ({median:.3f} s/batch)")


if __name__ == "__main__":
    main()
