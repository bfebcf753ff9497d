"""Engine on the tiny LLaVA-OneVision (CPU): equals the eager reference, continuous batching is invisible,
seeded sampling is reproducible across batch compositions, bad requests fail alone, uint8 media on the
device equal the reference's float pixels."""

from __future__ import annotations

import random

import torch

from models.generate import greedy_generate
from models.onevision import anyres
from models.onevision.model import OneVisionMedia
from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.engine.request import Request
from pipeline.engine.runners.onevision import OneVisionRunner

IMAGE, VIDEO, PAD = 151646, 151647, 151643
STOP = (151645, 151643)
SIZES = [(30, 40), (42, 42), (80, 42), (42, 200), (130, 90), (300, 300)]


def make_engine(model, slots=8, max_len=1000, **cfg) -> Engine:
    config = EngineConfig(max_num_seqs=slots, max_model_len=max_len, cuda_graphs=False, **cfg)
    return Engine(OneVisionRunner(model, slots, max_len, PAD, (0.5,) * 3, (0.5,) * 3), None, config, STOP)


def crops(n: int, side: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=g) * 2 - 1


def random_request(model, i: int, rng: random.Random, max_new: int, **sampling) -> Request:
    """Text-only, one anyres image, two images, or a video, with the media tokens the model needs."""
    g = torch.Generator().manual_seed(i)
    side = model.cfg.vision.image_size
    text = torch.randint(1000, 150000, (rng.randint(1, 12),), generator=g).tolist()
    kind = rng.choice(["text", "image", "image", "images", "video"])
    if kind == "text":
        return Request(f"r{i}", text, None, SamplingParams(max_new_tokens=max_new, **sampling))
    if kind == "video":
        media = OneVisionMedia(videos=[crops(rng.randint(1, 4), side, g)])
    else:
        sizes = [rng.choice(SIZES) for _ in range(1 if kind == "image" else 2)]
        n = [1 if len(sizes) > 1 else anyres.num_patches(h, w, model.cfg.image_grid_pinpoints, side)
             for h, w in sizes]
        media = OneVisionMedia(images=[crops(k, side, g) for k in n], image_sizes=sizes)
    n_img, n_vid = media.token_counts(model.cfg)
    split = rng.randint(0, len(text))
    ids = [*text[:split], *[IMAGE] * n_img, *[VIDEO] * n_vid, *text[split:]]
    return Request(f"r{i}", ids, media, SamplingParams(max_new_tokens=max_new, **sampling))


def run_all(engine: Engine, requests: list[Request]) -> dict[str, list[int]]:
    return {c.request_id: c.token_ids for c in engine.generate(requests)}


def test_engine_greedy_equals_eager_generate(our_tiny_ov):
    rng = random.Random(0)
    requests = [random_request(our_tiny_ov, i, rng, 12, ignore_eos=True) for i in range(6)]
    ref = greedy_generate(our_tiny_ov, [r.prompt_ids for r in requests], [r.media for r in requests],
                          max_new_tokens=12, pad_id=PAD)
    got = run_all(make_engine(our_tiny_ov), requests)
    assert [got[r.request_id] for r in requests] == ref


def test_forty_requests_continuous_batching_equal_alone(our_tiny_ov):
    rng = random.Random(1)
    requests = [random_request(our_tiny_ov, i, rng, rng.randint(1, 12), ignore_eos=True) for i in range(40)]
    engine = make_engine(our_tiny_ov, slots=6, max_prefill_requests=4, max_prefill_tokens=1500)
    batched = run_all(engine, requests)
    assert set(batched) == {r.request_id for r in requests}
    alone_engine = make_engine(our_tiny_ov, slots=1)
    for r in requests:
        assert run_all(alone_engine, [r])[r.request_id] == batched[r.request_id], r.request_id
        assert len(batched[r.request_id]) == r.sampling.max_new_tokens


def test_seeded_sampling_reproducible_across_batches(our_tiny_ov):
    rng = random.Random(2)
    params = dict(temperature=0.9, top_k=50, top_p=0.9, ignore_eos=True)
    target = random_request(our_tiny_ov, 100, rng, 10, seed=1234, **params)
    others = [random_request(our_tiny_ov, i, rng, rng.randint(2, 10), seed=i, **params) for i in range(7)]
    alone = run_all(make_engine(our_tiny_ov), [target])[target.request_id]
    mixed = run_all(make_engine(our_tiny_ov, slots=4), others[:3] + [target] + others[3:])[target.request_id]
    assert alone == mixed
    reseeded = Request("x", target.prompt_ids, target.media, SamplingParams(max_new_tokens=10, seed=99, **params))
    assert run_all(make_engine(our_tiny_ov), [reseeded])["x"] != alone


def test_bad_requests_fail_alone(our_tiny_ov):
    rng = random.Random(3)
    good = [random_request(our_tiny_ov, i, rng, 6) for i in range(4)]
    huge = Request("huge", [5000] * 990, None, SamplingParams(max_new_tokens=20))
    while (img := random_request(our_tiny_ov, 50, rng, 4)).media is None or not img.media.images:
        pass
    missing_tokens = Request("mismatch", img.prompt_ids[:-3] if img.prompt_ids[-1] != IMAGE else img.prompt_ids[1:],
                             img.media, SamplingParams(max_new_tokens=4))
    missing_tokens.prompt_ids.remove(IMAGE)
    out = {c.request_id: c for c in make_engine(our_tiny_ov).generate(good[:2] + [huge, missing_tokens] + good[2:])}
    assert out["huge"].finish_reason == "error" and out["huge"].error.startswith("too_long")
    assert out["mismatch"].finish_reason == "error" and "<image>" in out["mismatch"].error
    assert all(out[r.request_id].finish_reason in ("stop", "length") for r in good)


def test_uint8_media_normalised_on_device_equal_float(our_tiny_ov):
    g = torch.Generator().manual_seed(7)
    side = our_tiny_ov.cfg.vision.image_size
    size = (100, 60)
    n = anyres.num_patches(*size, our_tiny_ov.cfg.image_grid_pinpoints, side)
    u8 = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    as_float = (u8.float() / 255 - 0.5) / 0.5
    n_img, _ = OneVisionMedia(images=[u8], image_sizes=[size]).token_counts(our_tiny_ov.cfg)
    ids = [3000, *[IMAGE] * n_img, 3001]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    a = run_all(make_engine(our_tiny_ov), [Request("u8", ids, OneVisionMedia([u8], [size]), params)])["u8"]
    b = run_all(make_engine(our_tiny_ov), [Request("f", ids, OneVisionMedia([as_float], [size]), params)])["f"]
    assert a == b
