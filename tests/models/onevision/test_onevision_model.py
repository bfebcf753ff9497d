"""Parity of our OneVision with transformers' on the tiny checkpoint (fp32): logits, greedy generation,
and token accounting (anyres.* == the reference processor == our packed feature count).

Pixel values, image sizes and prompt ids come from transformers' own processor built from the tiny
directory (42 px crops, real tokenizer and chat template); both models see exactly the same inputs.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from models.generate import greedy_generate, prompt_logits
from models.onevision import anyres
from models.onevision.config import OneVisionConfig
from models.onevision.model import OneVisionMedia
from models.onevision.pack import pack_image

PAD, EOS = 151643, 151645
# (h, w): square, smaller than one ViT patch, smaller than a crop, wide, tall, extreme ratios, and sizes
# whose unpadded grid exceeds anyres_max_9 (bilinear downscale).
SIZES = [(42, 42), (4, 5), (30, 40), (100, 300), (300, 100), (500, 500), (250, 170), (60, 1000), (1000, 90)]


def image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def video(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 50, 64, 3), dtype=np.uint8)


def chat(proc, n_images: int, n_videos: int, text: str) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": text}]
    return proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def run_processor(proc, rows: list[tuple[list[Image.Image], list[np.ndarray], str]]):
    texts = [chat(proc, len(ims), len(vids), t) for ims, vids, t in rows]
    images = [ims for ims, _, _ in rows if ims]
    videos = [v for _, vids, _ in rows for v in vids]
    proc.tokenizer.padding_side = "left"
    return proc(text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt")


def to_media(inputs, rows, cfg: OneVisionConfig) -> list[OneVisionMedia | None]:
    """Split the processor's batch tensors back into per-prompt media (crops un-padded per image)."""
    out, i, j = [], 0, 0
    for ims, vids, _ in rows:
        if not ims and not vids:
            out.append(None)
            continue
        m = OneVisionMedia()
        for _ in ims:
            h, w = inputs["image_sizes"][i].tolist()
            n = 1 if len(ims) > 1 else anyres.num_patches(h, w, cfg.image_grid_pinpoints, cfg.vision.image_size)
            m.images.append(inputs["pixel_values"][i, :n])
            m.image_sizes.append((h, w))
            i += 1
        for _ in vids:
            m.videos.append(inputs["pixel_values_videos"][j])
            j += 1
        out.append(m)
    return out


def row_ids(inputs) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]


def compare_logits(hf, ours, proc, rows) -> torch.Tensor:
    inputs = run_processor(proc, rows)
    media = to_media(inputs, rows, ours.cfg)
    ids = row_ids(inputs)
    for r, m in zip(ids, media, strict=True):  # our CPU token accounting == the processor's expansion
        want = m.token_counts(ours.cfg) if m is not None else (0, 0)
        assert want == (r.count(ours.cfg.image_token_id), r.count(ours.cfg.video_token_id))
    with torch.no_grad():
        ref = hf(**inputs).logits
    got = prompt_logits(ours, ids, media, pad_id=PAD)
    valid = inputs["attention_mask"].bool()
    assert (got[valid] - ref[valid]).abs().max().item() <= 1e-4
    return got[:, -1]


@pytest.mark.parametrize("size", SIZES)
def test_single_image_logits(hf_tiny_ov, our_tiny_ov, hf_ov_processor, size):
    last = compare_logits(hf_tiny_ov, our_tiny_ov, hf_ov_processor, [([image(*size, seed=1)], [], "Describe.")])
    other = compare_logits(hf_tiny_ov, our_tiny_ov, hf_ov_processor, [([image(*size, seed=2)], [], "Describe.")])
    assert (last - other).abs().max().item() > 1e-3  # the image matters


def test_sizes_cover_downscale_and_tiny_images(our_tiny_ov):
    cfg = our_tiny_ov.cfg
    side = cfg.vision.side
    scaled = []
    for h, w in SIZES:
        rows, cols = anyres.grid_shape(h, w, cfg.image_grid_pinpoints, cfg.vision.image_size)
        _, kr, _, kc = anyres.unpadded_grid(h, w, rows * side, cols * side)
        scaled.append(anyres.downscaled_grid(kr, kc, side, cfg.max_num_patches) is not None)
    assert any(scaled) and not all(scaled)
    assert min(min(s) for s in SIZES) < cfg.vision.patch_size


def test_two_images_text_only_and_video_logits(hf_tiny_ov, our_tiny_ov, hf_ov_processor):
    p = hf_ov_processor
    two = compare_logits(hf_tiny_ov, our_tiny_ov, p, [([image(90, 60, 3), image(40, 200, 4)], [], "Compare.")])
    swapped = compare_logits(hf_tiny_ov, our_tiny_ov, p, [([image(90, 60, 4), image(40, 200, 3)], [], "Compare.")])
    assert (two - swapped).abs().max().item() > 1e-3
    compare_logits(hf_tiny_ov, our_tiny_ov, p, [([], [], "Write a haiku about the sea.")])
    vid = compare_logits(hf_tiny_ov, our_tiny_ov, p, [([], [video(8, 5)], "What happens?")])
    vid2 = compare_logits(hf_tiny_ov, our_tiny_ov, p, [([], [video(8, 6)], "What happens?")])
    assert (vid - vid2).abs().max().item() > 1e-3


def test_greedy_generation_matches_mixed_batch(hf_tiny_ov, our_tiny_ov, hf_ov_processor):
    rows = [
        ([image(300, 100, 7)], [], "Describe this image."),
        ([], [], "Hi."),
        ([image(500, 500, 8), image(20, 30, 9)], [], "What differs?"),
        ([], [video(8, 10)], "Summarize the video in detail please."),
        ([image(42, 42, 11)], [], "Caption."),
        # the reference stacks videos, so both videos of the batch share a frame count
        ([image(60, 1000, 12)], [video(8, 13)], "Relate the image to the video."),
        ([image(250, 170, 14)], [], "Long question about the image, with several words in it."),
    ]
    inputs = run_processor(hf_ov_processor, rows)
    with torch.no_grad():
        ref = hf_tiny_ov.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)
    ref = ref[:, inputs["input_ids"].shape[1]:].tolist()
    ours = greedy_generate(our_tiny_ov, row_ids(inputs), to_media(inputs, rows, our_tiny_ov.cfg),
                           max_new_tokens=24, stop_token_ids=(EOS,), pad_id=PAD)
    for r, o in zip(ref, ours, strict=True):
        cut = r.index(EOS) + 1 if EOS in r else len(r)
        assert o == r[:cut]
    assert len({tuple(o) for o in ours}) > 1


def test_token_counts_match_reference_processor(hf_ov_processor, shared_checkpoints):
    from transformers import LlavaOnevisionProcessor

    rng = random.Random(0)
    sizes = SIZES + [(1, 1), (1, 4000), (4000, 1), (384, 384), (768, 768), (1024, 1024), (2304, 2304)]
    sizes += [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(400)]
    real = LlavaOnevisionProcessor.from_pretrained(shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf")
    for proc in (hf_ov_processor, real):
        s = proc.image_processor.size["height"]
        patch = s // int(proc.num_image_tokens**0.5)
        pins = proc.image_processor.image_grid_pinpoints
        for h, w in sizes:
            assert anyres.num_image_tokens(h, w, pins, s, patch, 9) == proc._get_number_of_features(h, w, s, s)
            assert anyres.num_image_tokens(h, w, pins, s, patch, 9, multi_image=True) == proc.num_image_tokens + 1
        for frames in (1, 2, 7, 8, 32):
            ref = proc.replace_video_token({"pixel_values_videos": [np.zeros((frames, 3, s, s))]}, 0)
            assert anyres.num_video_tokens(frames, s, patch) == len(ref) // len(proc.video_token)
    assert anyres.num_video_tokens(1, 384, 14) == 197
    assert [anyres.num_image_tokens(h, w, real.image_processor.image_grid_pinpoints, 384, 14, 9)
            for h, w in [(384, 384), (480, 640), (768, 768), (1024, 1024)]] == [1485, 2929, 3699, 7371]


def test_packed_feature_count_matches_token_count(our_tiny_ov, shared_checkpoints):
    rng = random.Random(1)
    sizes = SIZES + [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(150)]
    real = OneVisionConfig.from_dir(shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf")
    for cfg in (our_tiny_ov.cfg, real):
        v, newline = cfg.vision, torch.zeros(2)
        for h, w in sizes:
            n = anyres.num_patches(h, w, cfg.image_grid_pinpoints, v.image_size)
            feats = pack_image(torch.zeros(n, v.side * v.side, 2), (h, w), newline, pinpoints=cfg.image_grid_pinpoints,
                               image_size=v.image_size, side=v.side, max_num_patches=cfg.max_num_patches,
                               multi_image=False)
            assert feats.shape[0] == anyres.num_image_tokens(h, w, cfg.image_grid_pinpoints, v.image_size,
                                                             v.patch_size, cfg.max_num_patches)
    # and through the whole model: encode_media's per-prompt length == the CPU count
    g = torch.Generator().manual_seed(0)
    cfg, s = our_tiny_ov.cfg, our_tiny_ov.cfg.vision.image_size
    media = []
    for h, w in SIZES[:6]:
        n = anyres.num_patches(h, w, cfg.image_grid_pinpoints, s)
        media.append(OneVisionMedia(images=[torch.randn(n, 3, s, s, generator=g)], image_sizes=[(h, w)],
                                    videos=[torch.randn(3, 3, s, s, generator=g)]))
    media.append(None)
    feats = our_tiny_ov.encode_media(media)
    for m, f in zip(media, feats, strict=True):
        assert (f is None) if m is None else f.shape[0] == sum(m.token_counts(cfg))


def test_mismatched_media_raises(our_tiny_ov):
    cfg, s = our_tiny_ov.cfg, our_tiny_ov.cfg.vision.image_size
    m = OneVisionMedia(images=[torch.randn(2, 3, s, s)], image_sizes=[(42, 42)])
    feats = our_tiny_ov.encode_media([m])
    ids = torch.tensor([[1, 2] + [cfg.image_token_id] * (feats[0].shape[0] - 1)])
    with pytest.raises(ValueError, match="media features"):
        our_tiny_ov.embed(ids, feats)
    with pytest.raises(ValueError, match="crops"):  # a 500x500 image needs a 6x6 grid + base
        our_tiny_ov.encode_media([OneVisionMedia(images=[torch.randn(2, 3, s, s)], image_sizes=[(500, 500)])])
    with pytest.raises(ValueError, match="<image>"):
        greedy_generate(our_tiny_ov, [[1, 2, cfg.image_token_id]], [m], max_new_tokens=2)


def test_uint8_media_normalized_on_device(our_tiny_ov):
    s = our_tiny_ov.cfg.vision.image_size
    g = torch.Generator().manual_seed(3)
    raw = [torch.randint(0, 256, (1, 3, s, s), generator=g, dtype=torch.uint8) for _ in range(2)]
    vid = torch.randint(0, 256, (4, 3, s, s), generator=g, dtype=torch.uint8)
    as_float = [(x.float() / 255.0 - 0.5) / 0.5 for x in raw]
    a = our_tiny_ov.encode_media([OneVisionMedia(raw, [(10, 20), (30, 5)], [vid])], pixel_mean=(0.5,) * 3,
                                 pixel_std=(0.5,) * 3)[0]
    b = our_tiny_ov.encode_media([OneVisionMedia(as_float, [(10, 20), (30, 5)], [(vid.float() / 255 - 0.5) / 0.5])])[0]
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="pixel_mean"):
        our_tiny_ov.encode_media([OneVisionMedia(raw, [(10, 20), (30, 5)])])
