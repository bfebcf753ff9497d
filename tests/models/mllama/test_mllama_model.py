"""Parity of our Mllama with transformers' on a tiny checkpoint (fp32): logits and greedy generation."""

from __future__ import annotations

import pytest
import torch

from models.generate import greedy_generate, prompt_logits
from models.mllama.model import MllamaImages

IMAGE = 128256
BOS = 128000
PAD = 128004
TILE = 28
# (aspect ratio id, tiles) for the supported ratios (1,1) (2,1) (1,3) (2,2) (1,4)
SHAPES = {"1x1": (1, 1), "2x1": (5, 2), "1x3": (3, 3), "2x2": (6, 4), "1x4": (4, 4)}


def random_images(shapes: list[str], seed: int) -> MllamaImages:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(shapes), 4, 3, TILE, TILE)
    ids, tiles = [], []
    for i, s in enumerate(shapes):
        ar, n = SHAPES[s]
        pixels[i, :n] = torch.randn(n, 3, TILE, TILE, generator=g)
        ids.append(ar)
        tiles.append(n)
    return MllamaImages(pixels, torch.tensor(ids), tiles)


def prompt(n_text_before: int, n_images: int, n_after: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(1000, 120000, (n_text_before,), generator=g).tolist()
    after = torch.randint(1000, 120000, (n_after,), generator=g).tolist()
    return [BOS, *before, *([IMAGE] * n_images), *after]


def hf_logits(hf, ids: list[int], images: MllamaImages | None) -> torch.Tensor:
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    input_ids = torch.tensor([ids])
    kwargs = {}
    if images is not None:
        spans = get_cross_attention_token_mask(ids, IMAGE)
        cam = convert_sparse_cross_attention_mask_to_dense([spans], [images.num_tiles], 4, len(ids))
        kwargs = dict(pixel_values=images.pixel_values[None], aspect_ratio_ids=images.aspect_ratio_ids[None],
                      aspect_ratio_mask=images.aspect_ratio_mask[None], cross_attention_mask=torch.tensor(cam))
    with torch.no_grad():
        return hf(input_ids=input_ids, **kwargs).logits[0]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_single_image_logits_match(hf_tiny_mllama, our_tiny_mllama, shape):
    ids = prompt(4, 1, 7, seed=1)
    images = random_images([shape], seed=2)
    ours = prompt_logits(our_tiny_mllama, [ids], [images], pad_id=PAD)[0]
    ref = hf_logits(hf_tiny_mllama, ids, images)
    assert (ours - ref).abs().max().item() <= 1e-4
    # The image must matter, before and after the image token (pre-image rows average over all tiles).
    other = prompt_logits(our_tiny_mllama, [ids], [random_images([shape], seed=3)], pad_id=PAD)[0]
    assert (other[-1] - ours[-1]).abs().max().item() > 1e-3
    assert (other[1] - ours[1]).abs().max().item() > 1e-3


def test_text_only_and_multi_image_logits_match(hf_tiny_mllama, our_tiny_mllama):
    text = prompt(9, 0, 0, seed=4)
    ours = prompt_logits(our_tiny_mllama, [text], None, pad_id=PAD)[0]
    assert (ours - hf_logits(hf_tiny_mllama, text, None)).abs().max().item() <= 1e-4
    for layout in [(3, 2, 5), (2, 1, 0)]:  # consecutive images, and image then text then image
        ids = prompt(*layout, seed=5)
        if layout == (2, 1, 0):
            ids = ids + [2000, 2001, IMAGE, 2002, 2003]
        images = random_images(["2x2", "1x3"], seed=6)
        ours = prompt_logits(our_tiny_mllama, [ids], [images], pad_id=PAD)[0]
        assert (ours - hf_logits(hf_tiny_mllama, ids, images)).abs().max().item() <= 1e-4


def mixed_batch():
    prompts = [prompt(3, 1, 6, 10), prompt(5, 0, 0, 11), prompt(2, 1, 12, 12), prompt(4, 1, 3, 13),
               prompt(7, 0, 0, 14), prompt(1, 1, 9, 15), prompt(6, 2, 4, 16)]
    media = [random_images(["1x1"], 20), None, random_images(["2x2"], 21), random_images(["1x4"], 22), None,
             random_images(["2x1"], 23), random_images(["1x3", "2x2"], 24)]
    return prompts, media


def test_padded_mixed_batch_matches_rows_alone(hf_tiny_mllama, our_tiny_mllama):
    prompts, media = mixed_batch()
    batch = prompt_logits(our_tiny_mllama, prompts, media, pad_id=PAD)
    seq = batch.shape[1]
    for ids, m, row in zip(prompts, media, batch, strict=True):
        ref = hf_logits(hf_tiny_mllama, ids, m)
        assert (row[seq - len(ids):] - ref).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(hf_tiny_mllama, our_tiny_mllama):
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    prompts, media = mixed_batch()
    ours = greedy_generate(our_tiny_mllama, prompts, media, max_new_tokens=24, pad_id=PAD)
    for ids, m, got in zip(prompts, media, ours, strict=True):
        kwargs = {}
        if m is not None:
            cam = convert_sparse_cross_attention_mask_to_dense(
                [get_cross_attention_token_mask(ids, IMAGE)], [m.num_tiles], 4, len(ids))
            kwargs = dict(pixel_values=m.pixel_values[None], aspect_ratio_ids=m.aspect_ratio_ids[None],
                          aspect_ratio_mask=m.aspect_ratio_mask[None], cross_attention_mask=torch.tensor(cam))
        ref = hf_tiny_mllama.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                      max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=PAD,
                                      **kwargs)[0, len(ids):].tolist()
        assert got == ref
