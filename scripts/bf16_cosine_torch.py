#!/usr/bin/env python3
"""PyTorch's own bf16 precision on the tiny fixtures: the smallest per-token
cosine between the bf16 and f32 last hidden states over real tokens, the figure
BENCHMARKS.md sets beside ours (tests `bf16_stays_within_tolerance_of_f32` and
`gpu_matches_cpu_on_minilm_in_f32_and_bf16`). Runs on the CPU in the golden venv
(scripts/requirements-golden.txt):

    python scripts/bf16_cosine_torch.py
"""

import os

import torch
from safetensors.torch import load_file
from transformers import AutoModel, T5EncoderModel

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

for name in ["tiny_t5_relu", "tiny_t5_gated", "tiny_bert"]:
    golden = load_file(os.path.join(FIXTURES, "golden", f"{name}.safetensors"))
    cls = AutoModel if "bert" in name else T5EncoderModel
    model = cls.from_pretrained(os.path.join(FIXTURES, name)).eval()
    ids, mask = golden["input_ids"].long(), golden["attention_mask"].long()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).last_hidden_state
        half = model.to(torch.bfloat16)(input_ids=ids, attention_mask=mask).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(full, half.float(), dim=-1)[mask.bool()]
    print(f"{name}: PyTorch bf16 vs f32 min token cosine {cos.min().item():.5f}")
