"""Attention over a slot-based KV cache (the generation engine's layout).

Cache layout per self-attention layer: k, v [num_slots, Hkv, max_len, D]; one running sequence owns one
slot, token t of that sequence lives at index t. Two backends implement ops.attention.SelfAttention:

- `SlotPrefill`: a batch of new prompts, right-padded to S tokens, rows -> `slot_ids`. Causal attention
  over the fresh k/v (right padding is never seen by real queries), then k/v are written to [0, S) of each
  slot; padding garbage past a prompt's end is overwritten by decode before anything attends to it.
- `SlotDecode`: one new token for each of the first B slots (row b = slot b), at cache index
  `positions[b]`. Written with index_put, attended with a key mask `idx <= positions[b]`. Every shape is
  fixed by B, so the whole step can be captured in a CUDA graph and replayed with new positions. On a GPU
  the split-key kernel (ops/decode_attention.py) writes the new k/v itself and reads only keys
  [0, position] of each slot, not max_len.
  (ops.attention folds grouped-query heads into the query axis, so the cache is never repeated per head.)
"""

from __future__ import annotations

import torch

from ops import decode_attention
from ops.attention import attention


class SlotKVCache:
    def __init__(self, num_layers: int, num_slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_slots, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots, self.max_len = num_slots, max_len

    @staticmethod
    def bytes_per_slot(num_layers: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * max_len * head_dim * torch.empty((), dtype=dtype).element_size()


class SlotPrefill:
    def __init__(self, cache: SlotKVCache, slot_ids: torch.Tensor, scale: float):
        self.cache, self.slot_ids, self.scale = cache, slot_ids, scale

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = k.shape[2]
        self.cache.k[layer_idx][self.slot_ids, :, :s] = k
        self.cache.v[layer_idx][self.slot_ids, :, :s] = v
        return attention(q, k, v, scale=self.scale, causal=True)


class SlotDecode:
    def __init__(self, cache: SlotKVCache, positions: torch.Tensor, scale: float):
        b = positions.shape[0]
        self.cache, self.positions, self.scale = cache, positions, scale
        self.rows = torch.arange(b, device=positions.device)
        idx = torch.arange(cache.max_len, device=positions.device)
        self.mask = (idx[None, :] <= positions[:, None])[:, None, None, :]  # [B, 1, 1, max_len]
        self.lengths = positions + 1  # the split-key kernel reads only these keys of each slot

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = q.shape[0]
        kc, vc = self.cache.k[layer_idx][:b], self.cache.v[layer_idx][:b]
        if decode_attention.available(q) and k.stride(-1) == 1 and v.stride(-1) == 1:
            # the kernel writes this step's k/v into the cache itself (two index_put launches fewer per layer)
            return decode_attention.decode_attention(q, kc, vc, self.scale, lengths=self.lengths, new_kv=(k, v))
        kc[self.rows, :, self.positions] = k[:, :, 0]
        vc[self.rows, :, self.positions] = v[:, :, 0]
        return attention(q, kc, vc, self.mask, self.scale)
