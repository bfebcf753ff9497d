"""Fusion helpers for the decode hot path.

- `fuse_linears(*linears)`: after weights are loaded, re-home several nn.Linear weights (same input) into
  one contiguous tensor and make each original weight a view of it; one GEMM then replaces several
  (q/k/v, gate/up). Parameter names and values are unchanged, so checkpoints and tests see no difference.
- `cuda_compiled(fn)`: runs `fn` through `torch.compile` when its first argument is a CUDA tensor, so
  chains of small elementwise kernels (RMSNorm, RoPE, SiLU*up) become one Triton kernel each; on the CPU
  (and with VLMCAP_NO_COMPILE=1) it is the plain function. Compilation happens during the engine's
  warm-up, before CUDA graphs are captured. Callers run it under `torch.inference_mode()` throughout: a
  function compiled under grad mode is a different graph (and can round differently) from one compiled
  for inference, which would make eager and graphed decode disagree.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import nn


def fuse_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """-> (fused weight [sum(out), in], fused bias or None, split sizes)."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    has_bias = [lin.bias is not None for lin in linears]
    bias = torch.cat([lin.bias.detach() for lin in linears]) if all(has_bias) else None
    sizes, start = [], 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start: start + n], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start: start + n], requires_grad=False)
        sizes.append(n)
        start += n
    return weight, bias, sizes


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as [rows, width] (a view where x is contiguous) for row-wise compiled kernels (norms): a row count
    that is dynamic from the first call and a width that never is, so each width compiles twice (one row, and
    any other count) whatever the rank and batch shapes of the callers. Called with [B, S, D], [B, 1, D] and
    [B, H, S, D] tensors, the compiled RMSNorm of an Mllama engine passed dynamo's recompile limit (8) in a
    Ray Data job on an H200 (session 15), after which new shapes ran eager; and a width that changes between
    calls would become symbolic (slow: see `cuda_compiled`)."""
    rows = x.reshape(-1, x.shape[-1])
    torch._dynamo.maybe_mark_dynamic(rows, 0)
    torch._dynamo.mark_static(rows, 1)
    return rows


def cuda_compiled(fn: Callable) -> Callable:
    compiled = None
    enabled = os.environ.get("VLMCAP_NO_COMPILE", "0") != "1"

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args):
        nonlocal compiled
        if not (enabled and x.is_cuda):
            return fn(x, *args)
        if compiled is None:
            # Not fullgraph: past dynamo's recompile limit (many models/shapes in one process, as in the
            # tests) a new shape falls back to eager instead of raising.
            # Automatic dynamic shapes (the default): compiled for the first shape, then once more with the dims
            # that changed (tokens, batch) symbolic. `dynamic=True` also made the hidden sizes symbolic, and the
            # index arithmetic over a symbolic width cost 3x in memory-bound kernels: per layer of an 8-request
            # OneVision-7B prefill on an H200, SwiGLU 2.52 -> 0.79 ms and RoPE 0.50 -> 0.19 ms with static widths.
            compiled = torch.compile(fn)
        return compiled(x, *args)

    return wrapper
