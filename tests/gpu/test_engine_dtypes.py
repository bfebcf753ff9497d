"""The engine in every `--dtype` the job offers (float32, float16, bfloat16), CUDA graphs on and off, for
both families on the tiny checkpoints: every request completes all its tokens, and graph replay equals eager
decode token for token. (float32 decode once crashed at its first step: the grouped-query decode path
viewed a non-contiguous SDPA output.)"""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("family", ["mllama", "onevision"])
def test_every_dtype_graphs_equal_eager(family, dtype, tiny_dirs, tiny_requests):
    requests = tiny_requests[family](12, seed=1, max_new=24)
    results = {}
    for graphs in (False, True):
        config = EngineConfig(max_num_seqs=8, max_model_len=1024, cuda_graphs=graphs, dtype=dtype)
        engine = build_engine(tiny_dirs[family], config, device="cuda")
        assert next(engine.runner.model.parameters()).dtype == getattr(torch, dtype)
        assert bool(engine.decode.graphs) == graphs
        done = list(engine.generate(requests))
        assert all(c.error is None and len(c.token_ids) == 24 for c in done), [c.error for c in done][:3]
        results[graphs] = {c.request_id: c.token_ids for c in done}
        del engine
        torch.cuda.empty_cache()
    assert results[True] == results[False]
