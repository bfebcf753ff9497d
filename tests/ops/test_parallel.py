"""ops/parallel.py: shard arithmetic, and sharded layers == unsharded ones at tp=2/3/4.

Ranks run as threads over an in-process group (collectives meet at a barrier, summed in rank order), so
many tp sizes are cheap to check; the real gloo path is tested in tests/pipeline/engine/test_distributed.py
and tests/models/mllama/test_mllama_tp.py. Weights come from a safetensors file through models/loader.py,
so the per-module loading rules (row/column slices, replicated KV heads, zero-padded vocabulary rows) are
what is tested.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from models.loader import load_checkpoint
from ops.attention import attention
from ops.parallel import (
    ColumnParallelLinear,
    ParallelContext,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    head_shard,
    vocab_shard,
)


class Done:
    def wait(self):
        return True


class ThreadGroup:
    def __init__(self, world: int):
        self.world, self.slots = world, [None] * world
        self.barrier = threading.Barrier(world, timeout=30)

    def view(self, rank: int):
        group = self

        class Rank:
            def allreduce(self, tensors):
                group.slots[rank] = tensors[0].clone()
                group.barrier.wait()
                total = group.slots[0].clone()
                for t in group.slots[1:]:
                    total += t
                group.barrier.wait()
                tensors[0].copy_(total)
                return Done()

            def allgather(self, outs, ins):
                group.slots[rank] = ins[0].clone()
                group.barrier.wait()
                for out, t in zip(outs[0], group.slots, strict=True):
                    out.copy_(t)
                group.barrier.wait()
                return Done()

        return Rank()


def run_ranks(world: int, fn):
    group, results, errors = ThreadGroup(world), [None] * world, []

    def body(rank):
        try:
            results[rank] = fn(ParallelContext(rank, world, group.view(rank)))
        except BaseException as err:  # surface in the test thread
            errors.append(err)
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_head_shard():
    assert [head_shard(32, ParallelContext(r, 8)) for r in range(8)] == [(4 * r, 4) for r in range(8)]
    assert [head_shard(8, ParallelContext(r, 8), replicate=True) for r in range(8)] == [(r, 1) for r in range(8)]
    # tp > KV heads: each rank holds the KV head its query heads read (q head h -> kv head h // (Hq/Hkv))
    assert [head_shard(2, ParallelContext(r, 8), replicate=True)[0] for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [head_shard(1, ParallelContext(r, 4), replicate=True) for r in range(4)] == [(0, 1)] * 4
    with pytest.raises(ValueError, match="not a multiple"):
        head_shard(3, ParallelContext(0, 4), replicate=True)
    with pytest.raises(ValueError, match="evenly"):
        head_shard(4, ParallelContext(0, 8))  # query heads are never replicated
    with pytest.raises(ValueError, match="evenly"):
        head_shard(6, ParallelContext(0, 4), replicate=True)


def test_vocab_shard_pads_the_last_rank():
    assert [vocab_shard(10, ParallelContext(r, 4)) for r in range(4)] == [(0, 3, 3), (3, 3, 3), (6, 3, 3), (9, 1, 3)]
    assert [vocab_shard(5, ParallelContext(r, 4)) for r in range(4)] == [(0, 2, 2), (2, 2, 2), (4, 1, 2), (5, 0, 2)]
    assert vocab_shard(128264, ParallelContext(7, 8)) == (7 * 16033, 16033, 16033)


class Block(nn.Module):
    """A GQA attention block with an MLP between a vocab-parallel embedding and lm_head."""

    def __init__(self, ctx: ParallelContext, heads: int, kv_heads: int, hd: int = 4, d: int = 24, inter: int = 36,
                 rows: int = 10, vocab: int = 11):
        super().__init__()
        self.embed = VocabParallelEmbedding(rows, d, ctx=ctx)
        self.q_proj = ColumnParallelLinear.heads(d, heads, hd, bias=True, ctx=ctx)
        self.k_proj = ColumnParallelLinear.heads(d, kv_heads, hd, bias=True, ctx=ctx, replicate=True)
        self.v_proj = ColumnParallelLinear.heads(d, kv_heads, hd, bias=True, ctx=ctx, replicate=True)
        self.o_proj = RowParallelLinear(heads * hd, d, bias=True, ctx=ctx, cols=self.q_proj.rows)
        self.up = ColumnParallelLinear(d, inter, bias=True, ctx=ctx)
        self.down = RowParallelLinear(inter, d, bias=True, ctx=ctx)
        self.lm_head = ParallelLMHead(d, vocab, ctx=ctx)
        self.hd = hd

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, -1, self.hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        x = x + self.o_proj(attention(q, k, v, causal=True).transpose(1, 2).reshape(b, s, -1))
        x = x + self.down(F.gelu(self.up(x)))
        return self.lm_head(x)


@pytest.mark.parametrize("tp,heads,kv_heads", [(2, 4, 2), (3, 6, 3), (4, 4, 1), (4, 8, 2), (2, 8, 8)])
def test_sharded_block_matches_unsharded(tmp_path, tp, heads, kv_heads):
    torch.manual_seed(tp * 100 + heads * 10 + kv_heads)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in Block(ParallelContext(), heads, kv_heads).named_parameters()}
    save_file({n: 0.2 * torch.randn(s) for n, s in shapes.items()}, tmp_path / "model.safetensors")

    def build(ctx):
        with torch.device("meta"):
            model = Block(ctx, heads, kv_heads)
        return load_checkpoint(model, tmp_path, dtype=torch.float32)

    ids = torch.tensor([[0, 9, 3, 7, 8, 1], [4, 5, 6, 2, 9, 8]])  # ids in every rank's (and the padded) range
    with torch.no_grad():
        want = build(ParallelContext())(ids)
        got = run_ranks(tp, lambda ctx: build(ctx)(ids))
    assert want.shape == (2, 6, 11) and want.abs().max().item() < 10
    for rank_logits in got:
        assert rank_logits.shape == want.shape
        assert (rank_logits - want).abs().max().item() <= 1e-5
    assert all(torch.equal(got[0], g) for g in got[1:])  # every rank sees bitwise the same logits


def test_shards_and_padding_rows(tmp_path):
    torch.manual_seed(0)
    full = torch.randn(10, 24)
    save_file({"embed.weight": full}, tmp_path / "model.safetensors")

    class Emb(nn.Module):
        def __init__(self, ctx):
            super().__init__()
            self.embed = VocabParallelEmbedding(10, 24, ctx=ctx)

    for rank in range(4):
        with torch.device("meta"):
            m = Emb(ParallelContext(rank, 4))
        w = load_checkpoint(m, tmp_path, dtype=torch.float32).embed.weight
        assert w.shape == (3, 24)
        n = min(3, 10 - 3 * rank)
        assert torch.equal(w[:n], full[3 * rank: 3 * rank + n]) and not w[n:].any()
