"""Tensor-parallel building blocks: a rank's view of its group, sharded linears and embeddings.

Contract:
- `ParallelContext(rank, world_size, group)` is passed explicitly to every module that shards (no global
  state). `group` is a c10d process group object (gloo or NCCL, built by pipeline/engine/distributed.py);
  it may be None for tp=1 and for meta-device planning, where no collective runs. The default context is
  tp=1, under which every module here computes exactly what the plain `nn.Linear` / `nn.Embedding` does.
- Every sharded module holds only its shard and knows its checkpoint tensor's full shape
  (`full_shape(leaf)`) and how to read its own part of it (`load_shard(leaf, param, slice_)`, where
  `slice_` is safetensors' lazy slice, so only the needed rows/columns ever leave the file). The rule
  lives on the module, not on the parameter, because `to_empty` replaces parameter objects (and would drop
  attributes set on them). models/loader.py calls both hooks.
- Column-parallel: output features split; row-parallel: input features split, output summed over ranks
  with one all-reduce (bias added once, after it). Attention projections split by heads
  (`head_shard`): query heads evenly; KV heads evenly when tp <= their count, else replicated so that each
  rank holds exactly the KV head its query heads read (grouped-query order: query head h uses KV head
  h // (Hq / Hkv), as in the checkpoints).
- Vocabulary-parallel embedding / lm_head: rows split into `ceil(rows / tp)` per rank; rows past the
  checkpoint's end are zero padding (never read, never returned: lm_head logits are gathered and cut back
  to the vocabulary). An embedding and an lm_head over the same row count share one partition, so a tied
  lm_head can share the embedding's shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ops import wire
from ops.gemv import linear


@dataclass(frozen=True)
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    group: Any = None  # c10d ProcessGroup, None when no collective can run (tp=1, meta planning)
    device: str = "cpu"  # where collective buffers for host objects live (cuda:N under NCCL)

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of {self.world_size}")

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def _require_group(self) -> Any:
        if self.group is None:
            raise RuntimeError(f"tp={self.world_size} collective needs a process group (this context has none)")
        return self.group

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; every rank gets the same values."""
        if self.world_size == 1:
            return x
        self._require_group().allreduce([x]).wait()
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.world_size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self._require_group().allgather([parts], [x]).wait()
        return torch.cat(parts, dim=dim)

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Rank `src` sends a message; every rank returns it (format and what may travel: ops/wire.py)."""
        if self.world_size == 1:
            return obj
        group = self._require_group()
        if self.rank == src:
            payload = torch.frombuffer(bytearray(wire.encode(obj)), dtype=torch.uint8).to(self.device)
            size = torch.tensor([payload.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        group.broadcast(size, src).wait()
        if self.rank != src:
            payload = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        group.broadcast(payload, src).wait()
        return obj if self.rank == src else wire.decode(payload.cpu().numpy().tobytes())


SINGLE = ParallelContext()


def even_shard(size: int, ctx: ParallelContext, what: str = "dimension") -> tuple[int, int]:
    if size % ctx.world_size:
        raise ValueError(f"{what} of {size} does not split evenly over tp={ctx.world_size}")
    per = size // ctx.world_size
    return ctx.rank * per, (ctx.rank + 1) * per


def head_shard(num_heads: int, ctx: ParallelContext, replicate: bool = False) -> tuple[int, int]:
    """(first head, head count) of this rank. `replicate` (KV heads): tp > heads gives one shared head."""
    if num_heads >= ctx.world_size or not replicate:
        first, end = even_shard(num_heads, ctx, "head count")
        return first, end - first
    if ctx.world_size % num_heads:
        raise ValueError(f"tp={ctx.world_size} is not a multiple of {num_heads} KV heads")
    return ctx.rank * num_heads // ctx.world_size, 1


def vocab_shard(rows: int, ctx: ParallelContext) -> tuple[int, int, int]:
    """(first row, rows read from the checkpoint, rows held incl. zero padding) of this rank."""
    per = math.ceil(rows / ctx.world_size)
    start = min(ctx.rank * per, rows)
    return start, min(per, rows - start), per


class ColumnParallelLinear(nn.Linear):
    """y[..., rows] = x @ W[rows].T (+ b[rows]); this rank's output features are checkpoint rows `rows`."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, ctx: ParallelContext = SINGLE,
                 rows: tuple[int, int] | None = None):
        start, end = rows if rows is not None else even_shard(out_features, ctx, "output features")
        super().__init__(in_features, end - start, bias=bias)
        self.full_out, self.rows = out_features, (start, end)

    @classmethod
    def heads(cls, in_features: int, num_heads: int, head_dim: int, *, bias: bool = False,
              ctx: ParallelContext = SINGLE, replicate: bool = False) -> ColumnParallelLinear:
        first, count = head_shard(num_heads, ctx, replicate)
        lin = cls(in_features, num_heads * head_dim, bias=bias, ctx=ctx,
                  rows=(first * head_dim, (first + count) * head_dim))
        lin.local_heads = count
        return lin

    def full_shape(self, leaf: str) -> tuple[int, ...]:
        return (self.full_out, self.in_features) if leaf == "weight" else (self.full_out,)

    def load_shard(self, leaf: str, param: torch.Tensor, slice_: Any) -> None:
        param.copy_(slice_[self.rows[0]: self.rows[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Linear):
    """y = sum over ranks of x[..., cols] @ W[:, cols].T, then + b: input features `cols` live here."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, ctx: ParallelContext = SINGLE,
                 cols: tuple[int, int] | None = None):
        start, end = cols if cols is not None else even_shard(in_features, ctx, "input features")
        super().__init__(end - start, out_features, bias=bias)
        self.full_in, self.cols, self.ctx = in_features, (start, end), ctx

    def full_shape(self, leaf: str) -> tuple[int, ...]:
        return (self.out_features, self.full_in) if leaf == "weight" else (self.out_features,)

    def load_shard(self, leaf: str, param: torch.Tensor, slice_: Any) -> None:
        param.copy_(slice_[:, self.cols[0]: self.cols[1]] if leaf == "weight" else slice_[:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.world_size == 1:
            return linear(x, self.weight, self.bias)
        y = self.ctx.all_reduce(linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Embedding):
    """Rows split over ranks; each rank embeds the ids it holds, zeros elsewhere, then one all-reduce."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, ctx: ParallelContext = SINGLE):
        self.start, self.read_rows, per = vocab_shard(num_embeddings, ctx)
        super().__init__(per, embedding_dim)
        self.full_rows, self.ctx = num_embeddings, ctx

    def full_shape(self, leaf: str) -> tuple[int, ...]:
        return (self.full_rows, self.embedding_dim)

    def load_shard(self, leaf: str, param: torch.Tensor, slice_: Any) -> None:
        load_rows(param, slice_, self.start, self.read_rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.ctx.world_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.ctx.all_reduce(out.masked_fill(outside[..., None], 0))


class ParallelLMHead(nn.Linear):
    """Logits over the full vocabulary on every rank: local rows' logits, all-gathered, padding cut."""

    def __init__(self, hidden: int, vocab: int, *, ctx: ParallelContext = SINGLE):
        self.start, self.read_rows, per = vocab_shard(vocab, ctx)
        super().__init__(hidden, per, bias=False)
        self.vocab, self.ctx = vocab, ctx

    def full_shape(self, leaf: str) -> tuple[int, ...]:
        return (self.vocab, self.in_features)

    def load_shard(self, leaf: str, param: torch.Tensor, slice_: Any) -> None:
        load_rows(param, slice_, self.start, self.read_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = linear(x, self.weight)
        if self.ctx.world_size == 1:
            return logits
        return self.ctx.all_gather(logits, dim=-1)[..., : self.vocab]


def load_rows(param: torch.Tensor, slice_: Any, start: int, count: int) -> None:
    if count > 0:
        param[:count].copy_(slice_[start: start + count])
    param[count:].zero_()  # padding rows: ids never map here, their logits are cut
