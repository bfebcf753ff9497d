"""Per-rank factories for tests/pipeline/engine/test_distributed.py (loaded by file path in every rank)."""

from __future__ import annotations

import os
import time

import torch

from ops.parallel import ParallelContext


class Echo:
    """Sums a per-rank tensor over the group; can be told to fail on one rank."""

    def __init__(self, ctx: ParallelContext, fail_rank: int = -1):
        if ctx.rank == fail_rank:
            raise RuntimeError(f"factory failure on rank {ctx.rank}")
        self.ctx = ctx

    def rank_sum(self, scale: float) -> float:
        return float(self.ctx.all_reduce(torch.tensor([scale * (self.ctx.rank + 1)]))[0])

    def gather(self, n: int) -> torch.Tensor:
        return self.ctx.all_gather(torch.full((1, n), float(self.ctx.rank)), dim=0)

    def pid(self) -> int:
        return os.getpid()

    def fail_on(self, rank: int) -> float:
        if self.ctx.rank == rank:
            raise ValueError(f"failure on rank {rank}")
        return 1.0

    def busy(self, seconds: float) -> None:
        """Local work with no collective (as a rank replaying a CUDA graph would be): a dead peer goes unseen."""
        time.sleep(seconds)

    def die_on(self, rank: int) -> float:
        if self.ctx.rank == rank:
            os._exit(3)
        return self.rank_sum(1.0)
