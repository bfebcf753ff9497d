"""Normalisation layers.

`RMSNorm` follows the Llama/Qwen2 convention exactly: the statistic is taken in fp32, the normalised
activations are cast back to the input dtype, and only then multiplied by the weight. Changing that order
changes bf16 results, so keep it. LayerNorm is torch's own (`nn.LayerNorm`).
"""

from __future__ import annotations

import torch
from torch import nn

from ops.fusion import cuda_compiled


@cuda_compiled
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
