"""CUDA-graph decode equals eager decode token for token (bf16, greedy, 64 tokens), at several batch
sizes, including Mllama batches mixing image rows and text-only rows, and OneVision batches mixing anyres
images, videos and text-only rows. Random weights at real shapes (Mllama-11B, OneVision-7B)."""

from __future__ import annotations

import pytest
import torch

from models.mllama.model import MllamaForConditionalGeneration, MllamaImages
from models.onevision import anyres
from models.onevision.model import LlavaOnevisionForConditionalGeneration, OneVisionMedia
from models.random_weights import random_model
from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.engine.request import Request
from pipeline.engine.runners.mllama import MllamaRunner
from pipeline.engine.runners.onevision import OneVisionRunner

IMAGE, BOS, PAD = 128256, 128000, 128004


@pytest.fixture(scope="module")
def mllama_11b(shared_checkpoints):
    model = random_model(MllamaForConditionalGeneration, shared_checkpoints / "Llama-3.2-11B-Vision-Instruct",
                         torch.bfloat16, "cuda")
    yield model
    del model
    torch.cuda.empty_cache()


def mllama_requests(n: int, seed: int) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        text = torch.randint(1000, 100000, (5 + 3 * i,), generator=g).tolist()
        params = SamplingParams(max_new_tokens=64, ignore_eos=True)
        if i % 3 == 1:
            out.append(Request(f"t{i}", [BOS, *text], None, params))
            continue
        tiles = 1 + i % 4
        pixels = torch.zeros(1, 4, 3, 560, 560)
        pixels[0, :tiles] = torch.randn(tiles, 3, 560, 560, generator=g)
        ar = {1: 1, 2: 5, 3: 3, 4: 6}[tiles]
        out.append(Request(f"i{i}", [BOS, 128006, 882, 128007, IMAGE, *text], MllamaImages(pixels, torch.tensor([ar]),
                                                                                         [tiles]), params))
    return out


@pytest.mark.parametrize("batch", [1, 3, 8, 21])
def test_mllama_graph_decode_equals_eager(mllama_11b, batch):
    requests = mllama_requests(batch, seed=batch)
    results = {}
    for graphs in (False, True):
        cfg = EngineConfig(max_num_seqs=32, max_model_len=160, cuda_graphs=graphs)
        runner = MllamaRunner(mllama_11b, 32, 160, 1, PAD, (0.5,) * 3, (0.5,) * 3)
        engine = Engine(runner, None, cfg, ())
        assert bool(engine.decode.graphs) == graphs
        results[graphs] = {c.request_id: c.token_ids for c in engine.generate(requests)}
        del engine, runner
    assert results[True] == results[False]
    assert all(len(t) == 64 for t in results[True].values())


@pytest.fixture(scope="module")
def onevision_7b(shared_checkpoints):
    model = random_model(LlavaOnevisionForConditionalGeneration,
                         shared_checkpoints / "llava-onevision-qwen2-7b-ov-hf", torch.bfloat16, "cuda")
    yield model
    del model
    torch.cuda.empty_cache()


def onevision_requests(model, n: int, seed: int) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    cfg, out = model.cfg, []
    for i in range(n):
        text = torch.randint(1000, 150000, (5 + 3 * i,), generator=g).tolist()
        params = SamplingParams(max_new_tokens=64, ignore_eos=True)
        kind = i % 3
        if kind == 1:
            out.append(Request(f"t{i}", text, None, params))
            continue
        if kind == 0:
            size = [(384, 384), (500, 900), (768, 768), (300, 1200)][i // 3 % 4]
            crops = anyres.num_patches(*size, cfg.image_grid_pinpoints, 384)
            media = OneVisionMedia(images=[torch.randint(0, 256, (crops, 3, 384, 384), dtype=torch.uint8,
                                                         generator=g)], image_sizes=[size])
        else:
            media = OneVisionMedia(videos=[torch.randint(0, 256, (4, 3, 384, 384), dtype=torch.uint8, generator=g)])
        n_img, n_vid = media.token_counts(cfg)
        out.append(Request(f"m{i}", [151644, *[151646] * n_img, *[151647] * n_vid, *text], media, params))
    return out


@pytest.mark.parametrize("batch", [1, 4, 9])
def test_onevision_graph_decode_equals_eager(onevision_7b, batch):
    requests = onevision_requests(onevision_7b, batch, seed=batch)
    max_len = max(len(r.prompt_ids) for r in requests) + 80
    results = {}
    for graphs in (False, True):
        cfg = EngineConfig(max_num_seqs=16, max_model_len=max_len, cuda_graphs=graphs)
        runner = OneVisionRunner(onevision_7b, 16, max_len, 151643, (0.5,) * 3, (0.5,) * 3)
        engine = Engine(runner, None, cfg, ())
        assert bool(engine.decode.graphs) == graphs
        results[graphs] = {c.request_id: c.token_ids for c in engine.generate(requests)}
        del engine, runner
    assert results[True] == results[False]
    assert all(len(t) == 64 for t in results[True].values())
