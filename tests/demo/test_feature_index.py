"""demo/feature_index.py: one gather gives exactly the features `pack_media` builds per example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from demo import world
from demo.examples import ExampleMaker, collate
from demo.feature_index import feature_index, gather_features
from models.onevision import anyres
from models.onevision.pack import pack_image, pack_video


@pytest.fixture(scope="module")
def maker(model_dir):
    return ExampleMaker(model_dir)


def reference(media, crops, newline, cfg):
    """What the model's `pack_media` concatenates, for features `crops` of every crop in `pixels` order."""
    v, it, out = cfg.vision, iter(crops.split([x.shape[0] for m in media for x in (*m.images, *m.videos)])), []
    for m in media:
        out += [pack_image(next(it), tuple(size), newline, pinpoints=cfg.image_grid_pinpoints,
                           image_size=v.image_size, side=v.side, max_num_patches=cfg.max_num_patches,
                           multi_image=False) for size in m.image_sizes]
        out += [pack_video(next(it), newline, image_size=v.image_size, patch_size=v.patch_size) for _ in m.videos]
    return torch.cat(out)


def test_one_gather_equals_per_example_packing(maker):
    rng = np.random.default_rng(3)
    examples = []
    for w, h in ((384, 384), (448, 336), (336, 448), (64, 64)):  # square, both anyres 2-tile grids, easy-VQA size
        img = world.render(world.sample_scene(rng)).resize((w, h)) if w > 64 else Image.new("RGB", (64, 64), "red")
        media, n = maker.image_media(img)
        examples.append(maker.build([("What is it?", "x")], media, n, [], "scene"))
    examples.insert(2, maker.clip(rng))
    examples.append(maker.clip(rng))
    batch = collate(examples, pad_id=0, cfg=maker.cfg)
    cfg, hidden = maker.cfg, 8
    unique = batch["unique_crops"]
    assert len(unique) < len(batch["crop_source"])  # a square image's tile is its base crop: encoded once
    torch.manual_seed(0)
    distinct = torch.randn(len(unique), cfg.vision.side ** 2, hidden, dtype=torch.float64)
    newline = torch.randn(hidden, dtype=torch.float64)
    got = gather_features(distinct, newline, batch, anyres.pooled_side(cfg.vision.image_size, cfg.vision.patch_size))
    want = reference(batch["media"], distinct[batch["crop_source"]], newline, cfg)
    assert got.shape == want.shape == (int((batch["ids"] >= cfg.image_token_id).sum()), hidden)
    assert torch.equal(got, want)


def test_images_outside_the_demo_world_raise(maker):
    media, _ = maker.image_media(Image.new("RGB", (2000, 1000)))  # anyres would downscale its grid
    with pytest.raises(ValueError, match="downscaled"):
        feature_index([media], torch.arange(sum(x.shape[0] for x in media.images)), maker.cfg)
