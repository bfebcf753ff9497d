"""Engine on the tiny Mllama (CPU): equals the eager reference, continuous batching is invisible,
seeded sampling is reproducible across batch compositions, oversize requests fail alone."""

from __future__ import annotations

import random

import pytest
import torch

from models.generate import greedy_generate
from models.mllama.model import MllamaImages
from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.engine.request import Request
from pipeline.engine.runners.mllama import MllamaRunner

IMAGE, BOS, PAD = 128256, 128000, 128004
TILE = 28
RATIOS = [(1, 1), (5, 2), (3, 3), (6, 4), (4, 4)]  # (aspect ratio id, tiles)


def make_engine(model, slots=8, max_len=96, **cfg) -> Engine:
    config = EngineConfig(max_num_seqs=slots, max_model_len=max_len, cuda_graphs=False, **cfg)
    runner = MllamaRunner(model, slots, max_len, 1, PAD, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return Engine(runner, None, config, default_stop_ids=(128001, 128008, 128009))


def random_request(i: int, rng: random.Random, max_new: int, **sampling) -> Request:
    g = torch.Generator().manual_seed(i)
    n_text = rng.randint(1, 20)
    text = torch.randint(1000, 120000, (n_text,), generator=g).tolist()
    if rng.random() < 0.3:
        return Request(f"r{i}", [BOS, *text], None, SamplingParams(max_new_tokens=max_new, **sampling))
    ar, tiles = rng.choice(RATIOS)
    pixels = torch.zeros(1, 4, 3, TILE, TILE)
    pixels[0, :tiles] = torch.randn(tiles, 3, TILE, TILE, generator=g)
    split = rng.randint(0, 3)
    ids = [BOS, *text[:split], IMAGE, *text[split:]]
    media = MllamaImages(pixels, torch.tensor([ar]), [tiles])
    return Request(f"r{i}", ids, media, SamplingParams(max_new_tokens=max_new, **sampling))


def run_all(engine: Engine, requests: list[Request]) -> dict[str, list[int]]:
    return {c.request_id: c.token_ids for c in engine.generate(requests)}


def test_engine_greedy_equals_eager_generate(our_tiny_mllama):
    rng = random.Random(0)
    requests = [random_request(i, rng, 12, ignore_eos=True) for i in range(6)]
    ref = greedy_generate(our_tiny_mllama, [r.prompt_ids for r in requests], [r.media for r in requests],
                          max_new_tokens=12, pad_id=PAD)
    got = run_all(make_engine(our_tiny_mllama), requests)
    assert [got[r.request_id] for r in requests] == ref


def test_forty_requests_continuous_batching_equal_alone(our_tiny_mllama):
    rng = random.Random(1)
    requests = [random_request(i, rng, rng.randint(1, 16), ignore_eos=True) for i in range(40)]
    engine = make_engine(our_tiny_mllama, slots=6, max_prefill_requests=4)
    batched = run_all(engine, requests)
    assert set(batched) == {r.request_id for r in requests}
    alone_engine = make_engine(our_tiny_mllama, slots=1)
    for r in requests:
        assert run_all(alone_engine, [r])[r.request_id] == batched[r.request_id], r.request_id
        assert len(batched[r.request_id]) == r.sampling.max_new_tokens


def test_seeded_sampling_reproducible_across_batches(our_tiny_mllama):
    rng = random.Random(2)
    params = dict(temperature=0.9, top_k=50, top_p=0.9, ignore_eos=True)
    target = random_request(100, rng, 10, seed=1234, **params)
    others = [random_request(i, rng, rng.randint(2, 10), seed=i, **params) for i in range(7)]
    alone = run_all(make_engine(our_tiny_mllama), [target])[target.request_id]
    mixed = run_all(make_engine(our_tiny_mllama, slots=4), others[:3] + [target] + others[3:])[target.request_id]
    assert alone == mixed
    reseeded = Request("x", target.prompt_ids, target.media,
                       SamplingParams(max_new_tokens=10, seed=99, **params))
    assert run_all(make_engine(our_tiny_mllama), [reseeded])["x"] != alone  # the seed matters


def test_oversize_request_errors_while_others_complete(our_tiny_mllama):
    rng = random.Random(3)
    good = [random_request(i, rng, 8) for i in range(5)]
    huge = Request("huge", [BOS] + [5000] * 90, None, SamplingParams(max_new_tokens=20))
    out = {c.request_id: c for c in make_engine(our_tiny_mllama).generate(good[:2] + [huge] + good[2:])}
    assert out["huge"].finish_reason == "error" and out["huge"].error.startswith("too_long")
    assert all(out[r.request_id].finish_reason in ("stop", "length") for r in good)


def test_image_token_mismatch_is_an_error_completion(our_tiny_mllama):
    r = Request("bad", [BOS, 5000, 5001], random_request(0, random.Random(9), 4).media, SamplingParams())
    rng = random.Random(4)
    while (ok := random_request(1, rng, 4)).media is None:
        pass
    out = {c.request_id: c for c in make_engine(our_tiny_mllama).generate([r, ok])}
    assert out["bad"].finish_reason == "error" and "image" in out["bad"].error
    assert out[ok.request_id].finish_reason == "length"


@pytest.mark.parametrize("stop_id_mode", ["default", "custom"])
def test_stop_token_ends_sequence(our_tiny_mllama, stop_id_mode):
    rng = random.Random(5)
    r = random_request(7, rng, 16, ignore_eos=True)
    free_run = run_all(make_engine(our_tiny_mllama), [r])[r.request_id]
    stop = free_run[5]
    params = SamplingParams(max_new_tokens=16, stop_token_ids=(stop,))
    engine = make_engine(our_tiny_mllama)
    if stop_id_mode == "default":
        params = SamplingParams(max_new_tokens=16)
        engine.default_stop_ids = (stop,)
    [c] = list(engine.generate([Request("s", r.prompt_ids, r.media, params)]))
    assert c.token_ids == free_run[: free_run.index(stop) + 1] and c.finish_reason == "stop"
