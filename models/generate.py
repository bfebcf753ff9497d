"""Plain eager batch generation: the reference path that the fast engine is tested against.

Rows are left-padded to one length (positions count real tokens only, as the reference), the prompt is
run once through the model, then one token per step is decoded over a `DenseKVCache` until every row hit
a stop token or `max_new_tokens`. Greedy only: this is for parity, not speed.

A model plugs in by providing
- `kv_cache_spec() -> (num_cache_layers, kv_heads, head_dim)`,
- `prepare(batch: PaddedBatch, media) -> ctx` (vision work, masks),
- `step(ids, positions, attn, ctx, prefill: bool) -> logits [B, S, V]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ops.attention import DenseKVCache, PaddedCausalAttention


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # [B, S] left-padded
    valid: torch.Tensor  # [B, S] bool, False on padding
    positions: torch.Tensor  # [B, S] 0 at each row's first real token (and on padding)
    left_pad: list[int]


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> PaddedBatch:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    length = max(len(p) for p in prompts)
    pads = [length - len(p) for p in prompts]
    ids = torch.tensor([[pad_id] * n + p for n, p in zip(pads, prompts, strict=True)], device=device)
    valid = torch.tensor([[False] * n + [True] * len(p) for n, p in zip(pads, prompts, strict=True)], device=device)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return PaddedBatch(ids, valid, positions, pads)


@torch.inference_mode()
def greedy_generate(model: Any, prompts: list[list[int]], media: Any = None, *, max_new_tokens: int,
                    stop_token_ids: tuple[int, ...] = (), pad_id: int = 0) -> list[list[int]]:
    """Generated ids per prompt, each ending at (and including) its first stop token."""
    device = next(model.parameters()).device
    batch = left_pad(prompts, pad_id, device)
    bsz, seq = batch.input_ids.shape
    layers, kv_heads, head_dim = model.kv_cache_spec()
    dtype = next(model.parameters()).dtype
    cache = DenseKVCache(layers, bsz, kv_heads, seq + max_new_tokens, head_dim, dtype, device)
    valid = torch.zeros(bsz, seq + max_new_tokens, dtype=torch.bool, device=device)
    valid[:, :seq] = batch.valid
    attn = PaddedCausalAttention(cache, valid, head_dim**-0.5)
    ctx = model.prepare(batch, media)

    attn.step(0, seq, dtype)
    logits = model.step(batch.input_ids, batch.positions, attn, ctx, prefill=True)[:, -1]
    positions = batch.positions[:, -1:]
    out = [[] for _ in range(bsz)]
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    stops = torch.tensor(list(stop_token_ids) or [-1], device=device)
    for t in range(max_new_tokens):
        token = logits.float().argmax(-1)
        for b in range(bsz):
            if not done[b]:
                out[b].append(int(token[b]))
        done |= torch.isin(token, stops)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        valid[:, seq + t] = True
        positions = positions + 1
        attn.step(seq + t, 1, dtype)
        logits = model.step(token[:, None], positions, attn, ctx, prefill=False)[:, -1]
    return out


@torch.inference_mode()
def prompt_logits(model: Any, prompts: list[list[int]], media: Any = None, *, pad_id: int = 0) -> torch.Tensor:
    """Logits [B, S, V] of one left-padded forward pass over the prompts (for parity tests)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = left_pad(prompts, pad_id, device)
    bsz, seq = batch.input_ids.shape
    layers, kv_heads, head_dim = model.kv_cache_spec()
    cache = DenseKVCache(layers, bsz, kv_heads, seq, head_dim, dtype, device)
    attn = PaddedCausalAttention(cache, batch.valid, head_dim**-0.5)
    attn.step(0, seq, dtype)
    return model.step(batch.input_ids, batch.positions, attn, model.prepare(batch, media), prefill=True)
