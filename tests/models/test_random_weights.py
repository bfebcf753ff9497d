"""models/random_weights.py under tensor parallelism: each rank builds only its shard (sharded tensors at
1/tp of the rows or columns), replicated tensors get the same values on every rank (as a real checkpoint
would give them), gates are non-zero; no checkpoint file is needed, only config.json."""

from __future__ import annotations

import shutil

import torch

from models.mllama.model import MllamaForConditionalGeneration
from models.random_weights import random_model
from ops.parallel import ParallelContext


def test_each_rank_fills_its_own_shard_and_replicas_agree(tiny_mllama_dir, tmp_path):
    cfg_only = tmp_path / "cfg"
    cfg_only.mkdir()
    shutil.copy(tiny_mllama_dir / "config.json", cfg_only / "config.json")
    whole = random_model(MllamaForConditionalGeneration, cfg_only, torch.float32, "cpu")
    ranks = [random_model(MllamaForConditionalGeneration, cfg_only, torch.float32, "cpu",
                          tp=ParallelContext(rank, 2)) for rank in range(2)]
    full = dict(whole.named_parameters())
    shards = [dict(m.named_parameters()) for m in ranks]
    assert shards[0].keys() == shards[1].keys() == full.keys()
    sharded = replicated = 0
    for name, p in full.items():
        a, b = shards[0][name], shards[1][name]
        assert a.shape == b.shape, name
        if a.shape == p.shape:
            assert torch.equal(a, b), f"replicated {name} differs between ranks"
            replicated += 1
        else:
            assert sum(x == y for x, y in zip(a.shape, p.shape, strict=True)) == a.dim() - 1, name
            assert a.numel() * 2 >= p.numel(), name  # a half (vocab rows: half rounded up)
            sharded += 1
    assert sharded >= 8 and replicated >= 8
    gates = [p for n, p in shards[1].items() if "gate" in n.rsplit(".", 1)[-1] and p.numel() == 1]
    assert gates and all(float(g.detach()) == 0.5 for g in gates)
