"""Attention kernels and the dense KV cache used by the plain (eager) generate.

Layouts: q [B, Hq, S, D], k/v [B, Hkv, T, D] with Hq a multiple of Hkv (grouped-query attention).
`attention` is SDPA with an optional additive or boolean mask; masks are additive float masks with
`finfo.min` (never -inf) so that a fully masked row gives a uniform average instead of NaN, which is what
the reference does for left-padding rows and for Mllama text rows that precede every image. One query per row
(decode) on a GPU goes to ops.decode_attention's split-key kernels (K/V read once per query group).

`DenseKVCache` + `PaddedCausalAttention` implement the simplest correct batching: rows are left-padded to
one length, every row writes its new K/V at the same cache index, and a [B, 1, S, T] mask hides padding
and the future. The generation engine uses its own cache layouts; the model code only sees the
`SelfAttention` protocol.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ops import decode_attention


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
    scale: float | None = None, causal: bool = False,
) -> torch.Tensor:
    b, hq, s, d = q.shape
    hkv = k.shape[1]
    if (s == 1 and not causal and (mask is None or (mask.is_floating_point() and mask.shape[1:3] == (1, 1)))
            and k.stride(-1) == 1 and v.stride(-1) == 1 and decode_attention.available(q)):
        return decode_attention.decode_attention(q, k, v, scale, mask=mask)
    if hkv != hq:
        groups = hq // hkv
        if s == 1 and not causal and (mask is None or mask.shape[-2] == 1):
            # One query per row (decode): fold the group into the query axis so K/V are read once, not
            # copied per query head. Query head h uses kv head h // groups, as in the checkpoints.
            out = F.scaled_dot_product_attention(q.view(b, hkv, groups, d), k, v, attn_mask=mask, scale=scale)
            # reshape, not view: some SDPA backends (the fp32/fp16 ones on CUDA) return a non-contiguous
            # [b, hkv, groups, d] result, which cannot be viewed as [b, hq, 1, d].
            return out.reshape(b, hq, 1, d)
        if q.is_cuda and mask is None and q.dtype in (torch.float16, torch.bfloat16):
            # The flash-class kernels read each K/V head for its whole query group: no copies of K and V per
            # group (OneVision-7B's 8-request prefill on an H200: 750 -> 733 ms). Only unmasked half-precision
            # calls: elsewhere SDPA's only GQA-capable backend is its math one, which materialises the scores.
            return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=causal, enable_gqa=True)
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=causal)


class SelfAttention(Protocol):
    """What a decoder layer calls after projecting and rotating its q/k/v for the current tokens."""

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class DenseKVCache:
    """Per-layer K/V buffers [B, Hkv, max_len, D], written at one shared index for all rows."""

    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len

    def write(self, layer_idx: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} > {self.max_len}")
        self.k[layer_idx][:, :, start:end] = k
        self.v[layer_idx][:, :, start:end] = v
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]


class PaddedCausalAttention:
    """Self-attention over a `DenseKVCache` for left-padded rows.

    `valid` [B, max_len] marks real (non-padding) cache slots. Call `step(start, length)` before each
    forward pass; it builds the additive mask for queries at cache indices [start, start+length).
    """

    def __init__(self, cache: DenseKVCache, valid: torch.Tensor, scale: float):
        self.cache, self.valid, self.scale = cache, valid, scale
        self.start, self.mask = 0, None

    def step(self, start: int, length: int, dtype: torch.dtype) -> None:
        end = start + length
        q_idx = torch.arange(start, end, device=self.valid.device)
        k_idx = torch.arange(end, device=self.valid.device)
        allowed = (k_idx[None, :] <= q_idx[:, None])[None] & self.valid[:, None, :end]  # [B, S, T]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.valid.device)
        self.mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # [B, 1, S, T]
        self.start = start

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_all, v_all = self.cache.write(layer_idx, self.start, k, v)
        return attention(q, k_all, v_all, self.mask, self.scale)
