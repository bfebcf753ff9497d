"""Self-attention for packed independent turns (demo/examples.py): a token of turn k sees the shared media
prefix (segment 0) and the tokens of turn k before it, never another turn, so every turn is computed exactly
as the caption job's single-turn sequence. Both classes follow the Qwen2 model's attention protocol:
`attend(layer_idx, q, k, v)` with q [B, Hq, S, D], k/v [B, Hkv, S, D] -> [B, Hq, S, D].

- `MaskedTurnAttention`: one additive [B, 1, S, S] mask for every query. Simple, the reference; SDPA can only
  run it with the memory-efficient kernel (flash takes no mask), over the whole square.
- `SplitTurnAttention`: prefix queries see exactly what plain causal attention gives them (every earlier key
  is prefix), so all rows go through causal SDPA (flash on the GPU) and only the turn rows, gathered into
  [B, Tmax] slots, are recomputed under a [B, 1, Tmax, S] mask and written back. The gather indices come from
  `turn_index` on the CPU (collate), so nothing here waits for the GPU.
"""

from __future__ import annotations

import torch

from ops.attention import attention


def visible_keys(segments: torch.Tensor, query_segment: torch.Tensor, query_position: torch.Tensor) -> torch.Tensor:
    """[B, 1, Q, S] boolean mask: key j is visible to a query of segment g at sequence position p when j <= p
    and the key is in the prefix (segment 0) or in segment g. `segments` [B, S]; queries [B, Q]."""
    s = segments.shape[1]
    before = torch.arange(s, device=segments.device)[None, None, :] <= query_position[:, :, None]
    keys = segments[:, None, :]
    return (((keys == 0) | (keys == query_segment[:, :, None])) & before)[:, None]


class AdditiveMask:
    """A boolean mask as SDPA's additive one (finfo.min, never -inf), built once in the queries' dtype
    (bf16 under autocast) and reused by every layer."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed, self.bias = allowed, None

    def __call__(self, dtype: torch.dtype) -> torch.Tensor:
        if self.bias is None or self.bias.dtype != dtype:
            self.bias = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device).masked_fill_(
                ~self.allowed, torch.finfo(dtype).min)
        return self.bias


class MaskedTurnAttention:
    def __init__(self, batch: dict, device: torch.device):
        # every position is a query: its own segment and position. Padding (-1) sees the prefix and itself:
        # never all-masked, never seen by a real token
        seg = batch["segments"].to(device, non_blocking=True)
        here = torch.arange(seg.shape[1], device=device).expand_as(seg)
        self.mask = AdditiveMask(visible_keys(seg, seg, here))  # [B, 1, S, S]

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, mask=self.mask(q.dtype))


def turn_index(segments: torch.Tensor) -> dict[str, torch.Tensor]:
    """For collate (CPU): where the turn tokens of `segments` [B, S] are and which slots of a [B, Tmax] grid
    they take. `turn_rows`: their flat indices into B * S; `turn_slots`: their flat indices into B * Tmax;
    `slot_segment` / `slot_position` [B, Tmax]: each slot's segment and sequence position (empty slots:
    segment -2 at position 0, so they see the first prefix token only and are never written back)."""
    b, _ = segments.shape
    turn = segments > 0
    tmax = max(int(turn.sum(1).max()), 1)
    rank = turn.cumsum(1) - 1  # a turn token's slot within its row
    slots = torch.arange(b)[:, None] * tmax + rank
    rows_b, rows_s = turn.nonzero(as_tuple=True)
    slot_segment = torch.full((b, tmax), -2, dtype=torch.long)
    slot_position = torch.zeros((b, tmax), dtype=torch.long)
    slot_segment.view(-1)[slots[turn]] = segments[turn]
    slot_position.view(-1)[slots[turn]] = rows_s
    return {"turn_rows": rows_b * segments.shape[1] + rows_s, "turn_slots": slots[turn],
            "slot_segment": slot_segment, "slot_position": slot_position}


class SplitTurnAttention:
    def __init__(self, batch: dict, device: torch.device):
        get = {k: batch[k].to(device, non_blocking=True) for k in
               ("segments", "turn_rows", "turn_slots", "slot_segment", "slot_position")}
        self.rows, self.slots = get["turn_rows"], get["turn_slots"]
        self.tmax = get["slot_segment"].shape[1]
        self.mask = AdditiveMask(visible_keys(get["segments"], get["slot_segment"], get["slot_position"]))

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, d = q.shape
        out = attention(q, k, v, causal=True).transpose(1, 2).reshape(b * s, h, d)  # right for prefix rows
        picked = q.transpose(1, 2).reshape(b * s, h, d).index_select(0, self.rows)  # [N, H, D]
        grid = q.new_zeros(b * self.tmax, h, d).index_copy(0, self.slots, picked)
        grid = grid.view(b, self.tmax, h, d).transpose(1, 2)  # [B, H, Tmax, D]
        turns = attention(grid, k, v, mask=self.mask(q.dtype)).transpose(1, 2).reshape(b * self.tmax, h, d)
        out = out.index_copy(0, self.rows, turns.index_select(0, self.slots))
        return out.view(b, s, h, d).transpose(1, 2)  # [B, H, S, D]


TURN_ATTENTION = {"masked": MaskedTurnAttention, "split": SplitTurnAttention}
