"""Normalisation layers.

`RMSNorm` follows the Llama/Qwen2 convention exactly: the statistic is taken in fp32, the normalised
activations are cast back to the input dtype, and only then multiplied by the weight. Changing that order
changes bf16 results, so keep it. `RMSNorm.add(x, h)` also adds a pending residual branch first (decoders
use it so that each residual add shares the norm's kernel on a GPU; there the compiled kernel normalises the
fp32 sum before rounding it, which can differ from eager bf16 by an ulp). LayerNorm is torch's own
(`nn.LayerNorm`).
"""

from __future__ import annotations

import torch
from torch import nn

from ops.fusion import as_rows, cuda_compiled


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


rms_norm = cuda_compiled(_rms_norm)


@cuda_compiled
def add_rms_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + h, rms_norm(x + h)): a residual add fused into the norm that follows it (one kernel on a GPU)."""
    x = x + h
    return x, _rms_norm(x, weight, eps)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(as_rows(x), self.weight, self.eps).view(x.shape)

    def add(self, x: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream `x` plus a branch's pending output `h` (None: nothing pending), and its norm.
        Decoders hand each branch's output to the next norm instead of adding it at once, which saves an
        elementwise kernel per branch in the decode step (launch-bound at small batches)."""
        if h is None:
            return x, self(x)
        total, normed = add_rms_norm(as_rows(x), as_rows(h), self.weight, self.eps)
        return total.view(x.shape), normed.view(x.shape)
