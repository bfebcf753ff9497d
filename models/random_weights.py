"""Random weights at real shapes, for benchmarks and GPU tests (no checkpoint needed).

`random_model(cls, ckpt_dir, dtype, device)` builds the model from the directory's `config.json` on the
meta device, materialises it on `device` and fills it: N(0, 0.02) weights, unit norm weights, zero
biases, and every scalar gate at 0.5 (zero gates would make images irrelevant).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.loader import finalize


@torch.no_grad()
def random_init(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "gate" in leaf and p.numel() == 1:
            p.fill_(0.5)
        elif ("norm" in name or "layernorm" in name) and leaf == "weight":
            p.fill_(1.0)
        elif leaf == "bias":
            p.zero_()
        else:
            p.normal_(0, 0.02, generator=gen)
    return finalize(model)


def random_model(cls: type, ckpt_dir: str | Path, dtype: torch.dtype, device: str | torch.device,
                 seed: int = 0) -> nn.Module:
    with torch.device("meta"):
        model = cls(cls.config_class.from_dir(ckpt_dir))
    model.to_empty(device=device).to(dtype)
    return random_init(model, seed).eval()
