#!/usr/bin/env python3
"""Golden values for the training maths: the MaxSim InfoNCE + margin loss (value
and gradients) and one AdamW step, computed once with PyTorch.

    /work/venv-golden/bin/python scripts/make_golden_train.py   # from the repo root

Writes tests/fixtures/golden/train_loss.safetensors (deterministic; seed 7). The
Rust tests in src/train/ compare against it without Python. Versions: see
scripts/requirements-golden.txt.
"""
import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

TAU, MARGIN, MARGIN_WEIGHT = 0.07, 0.2, 0.1
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 0.01


def maxsim_scores(q, qmask, d, dmask):
    """scores[i, j] = mean over query i's real tokens of the max over doc j's real tokens of <q, d>."""
    sim = torch.einsum("iqh,jdh->ijqd", q, d)
    sim = sim.masked_fill(dmask[None, :, None, :] == 0, float("-inf"))
    best = sim.max(dim=-1).values  # [i, j, q]
    best = best * qmask[:, None, :]
    return best.sum(-1) / qmask.sum(-1, keepdim=True)


def loss_fn(q, qmask, d, dmask):
    s = maxsim_scores(q, qmask, d, dmask)
    n = s.shape[0]
    labels = torch.arange(n)
    nce = F.cross_entropy(s / TAU, labels)
    pos = s.diagonal()
    neg = s.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf")).max(dim=1).values
    margin = F.relu(MARGIN - pos + neg).mean()
    return nce + MARGIN_WEIGHT * margin, s


def main():
    g = torch.Generator().manual_seed(7)
    b, lq, ld, h = 4, 5, 7, 8
    q = F.normalize(torch.randn(b, lq, h, generator=g), dim=-1).requires_grad_()
    d = F.normalize(torch.randn(b, ld, h, generator=g), dim=-1).requires_grad_()
    qmask = torch.ones(b, lq)
    qmask[1, 3:] = 0
    qmask[3, 4:] = 0
    dmask = torch.ones(b, ld)
    dmask[0, 5:] = 0
    dmask[2, 2:] = 0
    loss, scores = loss_fn(q, qmask, d, dmask)
    loss.backward()

    # One AdamW step (PyTorch semantics) on a parameter with a given gradient, twice.
    p0 = torch.randn(3, 4, generator=g)
    grads = [torch.randn(3, 4, generator=g) for _ in range(2)]
    p = p0.clone().requires_grad_()
    opt = torch.optim.AdamW([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()

    tensors = {
        "q": q.detach(), "d": d.detach(), "qmask": qmask, "dmask": dmask,
        "scores": scores.detach(), "loss": loss.detach().reshape(1),
        "grad_q": q.grad, "grad_d": d.grad,
        "adamw_p0": p0, "adamw_g1": grads[0], "adamw_g2": grads[1], "adamw_p2": p.detach(),
    }
    info = {"tau": TAU, "margin": MARGIN, "margin_weight": MARGIN_WEIGHT, "lr": LR, "betas": BETAS,
            "eps": EPS, "weight_decay": WD, "torch": torch.__version__}
    save_file({k: v.contiguous().float() for k, v in tensors.items()},
              "tests/fixtures/golden/train_loss.safetensors", metadata={"golden_info": json.dumps(info)})
    print("loss", loss.item())


if __name__ == "__main__":
    main()
