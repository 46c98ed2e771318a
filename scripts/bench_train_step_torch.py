#!/usr/bin/env python3
"""PyTorch side of the side-by-side train-step benchmark: times one LoRA training
step of a multi-vector (XTR / ColBERT) model on synthetic token ids, the same step
that `xtr-pipe bench train-step` times in Rust/MLX.

What one step is (mirrors src/train/step.rs, src/train/loss.rs, src/train/optim.rs,
src/train/bench.rs, src/model/random.rs, src/model/head.rs, src/model/lora.rs):

  * encode the queries [B, qlen] and the documents [B, dlen] (random ids in
    [1, vocab), all-ones masks, drawn once; the same batch every step) with the
    encoder, the head (sentence-transformers Dense layers, or a bias-free
    d_model -> 128 Linear for t5-base-random, or none), per-token L2
    normalisation (F.normalize) and padded positions zeroed;
  * the loss: MaxSim scores (mean over real query tokens of the max over real doc
    tokens of <q, d>), InfoNCE at temperature 0.07 over in-batch negatives plus
    0.1 * mean(relu(0.2 - pos + hardest negative)), in f32 (the same maths as
    scripts/make_golden_train.py, which the Rust tests are checked against);
  * backward into the LoRA adapters only (peft: r 16, alpha 32, dropout 0, on the
    attention q and v projections; encoder and head frozen);
  * AdamW (lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01) and reading
    the loss back (`loss.item()`), as the Rust step does.

Models: `--model t5-base-random` is a T5EncoderModel with xtr-pipe's
t5_base_config() (T5 v1.1 base encoder: vocab 32128, d_model 768, d_kv 64, d_ff
2048, 12 layers, 12 heads, gated-gelu, dropout 0.1, eps 1e-6), randomly
initialised with the same distributions as src/model/random.rs (seed 0; the values
differ, the RNGs do), plus a random bias-free 768 -> 128 head. `--model DIR` loads
an HF-layout directory (BERT -> BertModel, T5 -> T5EncoderModel) and, like
xtr-pipe's ModelDir, the Dense modules that modules.json lists (none: identity).

Timing: wall time per step (torch.cuda.synchronize() on the GPU), median over
--steps timed steps after --warmup untimed ones; samples_per_s = batch / median.
The per-phase split (forward query, forward doc, loss, backward, optimizer, as
fractions of their sum) comes from --phase-steps extra steps with a
synchronisation barrier between phases (xtr-pipe splits only forward+backward /
optimizer).

Modes: eager-f32, eager-bf16, compiled-f32, compiled-bf16. bf16 = torch.autocast
(bfloat16) over f32 weights, loss in f32. compiled = torch.compile (inductor,
static shapes) of the encode function (model + head + normalise; one graph per
sequence length) and of the loss function; on the CPU inductor needs a C++
compiler (gcc/g++).

Run on the CPU (from the repo root):

    /work/venv-golden/bin/python scripts/bench_train_step_torch.py \\
        --model tests/fixtures/tiny_bert --batch 3 --qlen 4 --dlen 6 --steps 3 --json
    flock /tmp/xtr-build.lock /work/venv-golden/bin/python scripts/bench_train_step_torch.py \\
        --model t5-base-random --batch 12 --qlen 32 --dlen 128 --steps 5 --threads 2

On the GPU machine (one JSON object per mode, JSON Lines):

    /opt/torch/.venv/bin/python scripts/bench_train_step_torch.py --model t5-base-random \\
        --device cuda --modes eager-f32,compiled-bf16 --batch 12 --json

Compare with `xtr-pipe bench train-step --model ... --batch 12 --qlen 32 --dlen 128`
(same defaults). With --json the human lines go to stderr and stdout holds only JSON.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

T5_BASE_RANDOM = "t5-base-random"
MODES = ("eager-f32", "eager-bf16", "compiled-f32", "compiled-bf16")

# src/train/loss.rs LossConfig::default()
TAU, MARGIN, MARGIN_WEIGHT = 0.07, 0.2, 0.1
MASKED = -1e9
# src/train/optim.rs AdamWConfig::default()
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.01
# src/model/lora.rs LoraConfig::default()
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.0
HEAD_DIM = 128  # src/train/bench.rs: random_t5(config, 128, 0)
INPUT_SEED = 42


def log(*args):
    print(*args, file=LOG, flush=True)


LOG = sys.stdout


# --------------------------------------------------------------------------- model


def t5_base_config():
    """xtr-pipe's t5_base_config() (src/model/random.rs) as a transformers T5Config."""
    from transformers import T5Config

    return T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )


def random_t5():
    """A T5 encoder with xtr-pipe's random-init distributions: linears N(0, 1/fan_in),
    embeddings N(0, 1), relative attention bias N(0, 0.1), norms 1; seed 0."""
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    config = t5_base_config()
    model = T5EncoderModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                p.normal_(0.0, 0.1)
            elif "layer_norm" in name:
                p.fill_(1.0)
            elif name == "shared.weight" or name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 1.0)
            elif p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(config.d_model, HEAD_DIM, bias=False))  # PyTorch default init
    return model, head, config.vocab_size, "t5"


def load_dir(root):
    """Encoder + Dense head of an HF / sentence-transformers directory, the way
    xtr-pipe's ModelDir::open / load_model reads it."""
    modules = []
    if os.path.isfile(os.path.join(root, "modules.json")):
        with open(os.path.join(root, "modules.json")) as f:
            modules = json.load(f)
    encoder_dir = root
    for m in modules:
        if m["type"].endswith(".Transformer") and m.get("path"):
            cand = os.path.join(root, m["path"])
            if os.path.isfile(os.path.join(cand, "config.json")):
                encoder_dir = cand
            break
    with open(os.path.join(encoder_dir, "config.json")) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    mtype = cfg.get("model_type", "")
    if any(a.startswith("T5") or a.startswith("MT5") for a in archs) or (not archs and mtype == "t5"):
        from transformers import T5EncoderModel

        model = T5EncoderModel.from_pretrained(encoder_dir, dtype=torch.float32)
        kind = "t5"
    elif any(a.startswith("Bert") for a in archs) or (not archs and mtype == "bert"):
        from transformers import BertModel

        model = BertModel.from_pretrained(encoder_dir, add_pooling_layer=False, dtype=torch.float32)
        kind = "bert"
    else:
        raise SystemExit(f"{encoder_dir}: unsupported architecture {archs} (model_type {mtype!r})")

    layers = []
    for m in modules:
        if not m["type"].endswith(".Dense"):
            continue
        ddir = os.path.join(root, m["path"])
        with open(os.path.join(ddir, "config.json")) as f:
            dc = json.load(f)
        bias = dc.get("bias", True)
        lin = nn.Linear(dc["in_features"], dc["out_features"], bias=bias)
        st = os.path.join(ddir, "model.safetensors")
        if os.path.isfile(st):
            from safetensors.torch import load_file

            sd = load_file(st)
        else:
            sd = torch.load(os.path.join(ddir, "pytorch_model.bin"), map_location="cpu")
        with torch.no_grad():
            lin.weight.copy_(sd["linear.weight"].float())
            if bias:
                lin.bias.copy_(sd["linear.bias"].float())
        layers.append(lin)
        act = dc.get("activation_function", "torch.nn.modules.activation.Tanh").rsplit(".", 1)[-1]
        if act == "Tanh":
            layers.append(nn.Tanh())
        elif act != "Identity":
            raise SystemExit(f"{ddir}: unsupported Dense activation_function {act!r} (Identity or Tanh)")
    head = nn.Sequential(*layers)  # empty = identity
    return model, head, cfg["vocab_size"], kind


class MultiVector(nn.Module):
    """Encoder + head + per-token L2 normalisation, padded positions zeroed
    (src/model/head.rs MultiVectorModel::forward_with)."""

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, ids, mask):
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = F.normalize(self.head(hidden), dim=-1)
        return emb * mask.unsqueeze(-1).to(emb.dtype)


def build(model_name, device):
    if model_name == T5_BASE_RANDOM:
        encoder, head, vocab, kind = random_t5()
    else:
        encoder, head, vocab, kind = load_dir(model_name)
    from peft import LoraConfig, get_peft_model

    targets = ["q", "v"] if kind == "t5" else ["query", "value"]
    torch.manual_seed(0)
    lcfg = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                      target_modules=targets, bias="none")
    encoder = get_peft_model(encoder, lcfg)
    for p in head.parameters():
        p.requires_grad_(False)
    model = MultiVector(encoder, head).to(device)
    attn = getattr(encoder.base_model.model.config, "_attn_implementation", None)
    return model, vocab, kind, attn


# --------------------------------------------------------------------------- loss


def maxsim_scores(q, qmask, d, dmask):
    """[B, B] scores, one GEMM for all pairs as in src/train/loss.rs."""
    b, lq, h = q.shape
    bd, ld, _ = d.shape
    sim = (q.reshape(b * lq, h) @ d.reshape(bd * ld, h).t()).reshape(b, lq, bd, ld)
    penalty = (1.0 - dmask.to(sim.dtype)).reshape(1, 1, bd, ld) * MASKED
    best = (sim + penalty).amax(dim=3)  # [B, Lq, Bd]
    qm = qmask.float()
    best = best.float() * qm.reshape(b, lq, 1)
    return best.sum(1) / qm.sum(1, keepdim=True)


def retrieval_loss(q, qmask, d, dmask):
    s = maxsim_scores(q, qmask, d, dmask)
    n = s.shape[0]
    labels = torch.arange(n, device=s.device)
    nce = F.cross_entropy(s / TAU, labels)
    eye = torch.eye(n, device=s.device, dtype=s.dtype)
    pos = (s * eye).sum(1)
    hardest = (s + eye * MASKED).amax(dim=1)
    margin = F.relu(MARGIN - pos + hardest).mean()
    return nce + MARGIN_WEIGHT * margin


# --------------------------------------------------------------------------- bench


def run_mode(args, mode, device):
    compiled, dtype = mode.split("-")
    torch._dynamo.reset()
    model, vocab, kind, attn = build(args.model, device)
    dropout = args.dropout == "on" if args.dropout else args.model == T5_BASE_RANDOM
    model.train(dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)

    g = torch.Generator().manual_seed(INPUT_SEED)
    qids = torch.randint(1, vocab, (args.batch, args.qlen), generator=g).to(device)
    dids = torch.randint(1, vocab, (args.batch, args.dlen), generator=g).to(device)
    qmask = torch.ones(args.batch, args.qlen, dtype=torch.long, device=device)
    dmask = torch.ones(args.batch, args.dlen, dtype=torch.long, device=device)

    encode, loss_fn = model, retrieval_loss
    if compiled == "compiled":
        encode = torch.compile(model, dynamic=False)
        loss_fn = torch.compile(retrieval_loss, dynamic=False)

    dev_type = device.type
    if dtype == "bf16":
        autocast = lambda: torch.autocast(dev_type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    no_autocast = lambda: torch.autocast(dev_type, enabled=False)  # noqa: E731
    sync = torch.cuda.synchronize if dev_type == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            q = encode(qids, qmask)
            d = encode(dids, dmask)
        with no_autocast():
            loss = loss_fn(q.float(), qmask, d.float(), dmask)
        loss.backward()
        opt.step()
        return loss.item()

    def phased_step(acc):
        opt.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        with autocast():
            q = encode(qids, qmask)
        sync()
        t1 = time.perf_counter()
        with autocast():
            d = encode(dids, dmask)
        sync()
        t2 = time.perf_counter()
        with no_autocast():
            loss = loss_fn(q.float(), qmask, d.float(), dmask)
        sync()
        t3 = time.perf_counter()
        loss.backward()
        sync()
        t4 = time.perf_counter()
        opt.step()
        value = loss.item()
        sync()
        t5 = time.perf_counter()
        for k, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            acc[k] += dt
        return value

    log(f"[{mode}] model {args.model} ({kind}, attention {attn}), device {device}, "
        f"trainable {trainable}, dropout {'on' if dropout else 'off'}")
    t = time.perf_counter()
    try:
        for i in range(args.warmup):
            step()
            if i == 0:
                log(f"[{mode}] first step {time.perf_counter() - t:.2f}s"
                    + (" (includes compilation)" if compiled == "compiled" else ""))
    except Exception as e:  # compilation failures surface here
        if compiled == "compiled":
            raise SystemExit(f"[{mode}] torch.compile failed on {device}: {type(e).__name__}: {e}\n"
                             "(on the CPU inductor needs a working C++ compiler; try an eager-* mode)")
        raise
    times, loss = [], math.nan
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    if not math.isfinite(loss):
        raise SystemExit(f"[{mode}] the loss is {loss}: the step diverged")
    acc = dict.fromkeys(PHASES, 0.0)
    for _ in range(args.phase_steps):
        phased_step(acc)
    total = sum(acc.values()) or 1.0
    n = max(args.phase_steps, 1)
    # As xtr-pipe takes it: sorted, element len/2 (the upper median for an even count).
    median = sorted(times)[len(times) // 2]
    report = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "model": args.model,
        "device": dev_type,
        "device_name": torch.cuda.get_device_name(device) if dev_type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "mode": mode,
        "attention": attn,
        "batch": args.batch,
        "qlen": args.qlen,
        "dlen": args.dlen,
        "steps": args.steps,
        "warmup": args.warmup,
        "dropout": dropout,
        "trainable_params": trainable,
        "step_seconds": median,
        "step_seconds_all": times,
        "samples_per_s": args.batch / median,
        "phases": {k: v / total for k, v in acc.items()},
        "phase_seconds": {k: v / n for k, v in acc.items()},
        "phase_steps": args.phase_steps,
        "final_loss": loss,
    }
    log(f"[{mode}] step {median * 1e3:.1f} ms median of {args.steps} "
        f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}), "
        f"{report['samples_per_s']:.2f} samples/s, final loss {loss:.6f}")
    log(f"[{mode}] phases: " + ", ".join(
        f"{k} {100 * report['phases'][k]:.1f}% ({1e3 * report['phase_seconds'][k]:.1f} ms)" for k in PHASES))
    del model, opt, encode, loss_fn
    if dev_type == "cuda":
        torch.cuda.empty_cache()
    return report


PHASES = ("forward_query", "forward_doc", "loss", "backward", "optimizer")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=T5_BASE_RANDOM,
                    help=f"{T5_BASE_RANDOM!r} or an HF-layout model directory (BERT or T5)")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--qlen", type=int, default=32)
    ap.add_argument("--dlen", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--phase-steps", type=int, default=3,
                    help="extra steps with barriers for the per-phase split (0: none)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 2 on cpu)")
    ap.add_argument("--mode", default="eager-f32", choices=MODES)
    ap.add_argument("--modes", default=None, help="comma-separated modes, run one after another (JSON Lines)")
    ap.add_argument("--dropout", choices=["on", "off"], default=None,
                    help=f"model.train() vs eval() in the step (default: on for {T5_BASE_RANDOM}, off for dirs)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (off: true f32)")
    ap.add_argument("--json", action="store_true", help="JSON on stdout (one object per mode), human lines on stderr")
    args = ap.parse_args()

    if args.json:
        LOG = sys.stderr
    if args.batch < 2:
        raise SystemExit("--batch must be at least 2 (in-batch negatives)")
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else [args.mode]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available to this torch")
    threads = args.threads if args.threads is not None else (2 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    for mode in modes:
        report = run_mode(args, mode, device)
        if args.json:
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
