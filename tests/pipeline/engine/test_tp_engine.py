"""pipeline/engine/tp_engine.py: the engine over a tp=2 gloo replica of the tiny Mllama produces the
tokens of the single-process engine (greedy and seeded sampling, continuous batching over 8 slots)."""

from __future__ import annotations

import random

import torch

from models.mllama.model import MllamaImages
from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.engine.tp_engine import build_tp_engine

IMAGE, BOS, TILE = 128256, 128000, 28
RATIOS = [(1, 1), (5, 2), (3, 3), (6, 4), (4, 4)]


def requests(n: int, seed: int) -> list[Request]:
    rng, out = random.Random(seed), []
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        text = torch.randint(1000, 120000, (rng.randint(1, 20),), generator=g).tolist()
        sampling = SamplingParams(max_new_tokens=rng.randint(1, 14), ignore_eos=True,
                                  **({"temperature": 0.8, "top_p": 0.9, "seed": i} if i % 3 == 0 else {}))
        if i % 4 == 1:
            out.append(Request(f"r{i}", [BOS, *text], None, sampling))
            continue
        ar, tiles = rng.choice(RATIOS)
        pixels = torch.zeros(1, 4, 3, TILE, TILE, dtype=torch.uint8)
        pixels[0, :tiles] = torch.randint(0, 256, (tiles, 3, TILE, TILE), generator=g, dtype=torch.uint8)
        split = rng.randint(0, 3)
        out.append(Request(f"r{i}", [BOS, *text[:split], IMAGE, *text[split:]],
                           MllamaImages(pixels, torch.tensor([ar]), [tiles]), sampling))
    return out


def test_tp2_engine_equals_single_process_engine(tiny_mllama_dir):
    config = EngineConfig(max_num_seqs=8, max_model_len=96, cuda_graphs=False, dtype="float32")
    reqs = requests(20, seed=3)
    single = {c.request_id: (c.token_ids, c.finish_reason) for c in build_engine(tiny_mllama_dir, config,
                                                                                   device="cpu").generate(reqs)}
    engine, replica = build_tp_engine(tiny_mllama_dir, 2, config, backend="gloo")
    try:
        assert replica.ctx.world_size == 2 and engine.runner.num_slots == 8
        got = {c.request_id: (c.token_ids, c.finish_reason) for c in engine.generate(reqs)}
    finally:
        replica.shutdown()
    assert got == single
    assert all(reason == "length" for _, reason in got.values())
    assert [p.exitcode for p in replica.workers] == [0]
