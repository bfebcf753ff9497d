"""Random weights at real shapes, for benchmarks and GPU tests (no checkpoint needed).

`random_model(cls, ckpt_dir, dtype, device, tp=ctx)` builds the model from the directory's `config.json` on
the meta device, materialises it on `device` and fills it: N(0, 0.02) weights, unit norm weights, zero
biases, and every scalar gate at 0.5 (zero gates would make images irrelevant).

Under tensor parallelism each rank builds and fills only its own shard (no checkpoint is read, nothing
whole is ever materialised), so 90B/72B can be timed from `config.json` alone. Every rank draws from the
same seed in the same parameter order; replicated tensors (vision towers, norms) have the same shapes on
every rank, so they get the same values everywhere, as a real checkpoint would give them. Sharded tensors
are not slices of one tp=1 model: tp=N output equals tp=1 output only for loaded checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.loader import finalize
from ops.parallel import SINGLE, ParallelContext


@torch.no_grad()
def random_init(model: nn.Module, seed: int = 0, fuse: bool = True) -> nn.Module:
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
    return finalize(model) if fuse else model


def random_model(cls: type, ckpt_dir: str | Path, dtype: torch.dtype, device: str | torch.device,
                 seed: int = 0, tp: ParallelContext = SINGLE, fuse: bool = True) -> nn.Module:
    """`fuse=False` keeps the checkpoint's separate projections (for writing a checkpoint)."""
    with torch.device("meta"):
        cfg = cls.config_class.from_dir(ckpt_dir)
        model = cls(cfg, tp) if tp.world_size > 1 else cls(cfg)
    model.to(dtype).to_empty(device=device)  # cast on meta: materialising in float32 first needs 2x the memory
    return random_init(model, seed, fuse).eval()
