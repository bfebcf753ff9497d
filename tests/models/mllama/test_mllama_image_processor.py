"""models/mllama/image_processor.py (after models/media.py) vs transformers' Mllama processors.

Oracle: `AutoImageProcessor.from_pretrained` on tmp copies of the real 560 px (Instruct) and 448 px (base)
processor files — transformers 5's default, torchvision-backed `MllamaImageProcessor`. For 34 generated
images (1x1, 10x10, 4000x30, 30x4000, 1120x1120, 800x600, odd sizes; every mode of models/media.py, in
real containers; an EXIF-rotated JPEG) and both configs: our uint8 tiles equal the reference's resized
uint8 values exactly (reference run without rescale/normalize), our float path and our normalised uint8
tiles (numpy helper and the device formula) are within 1e-5 of the reference's pixel values, the
reference's extra tiles are zero padding, and aspect-ratio ids, masks and tile counts are exact.
`MllamaImageProcessorPil` (Pillow resize) is checked to differ by at most one uint8 level. Canvas and
fit-size geometry is compared with the reference's functions on 3,000 random sizes; the full
`AutoProcessor` (prompt ids + pixels) against our tokenizer, chat template and processor.
16-bit images are the one intended difference (see models/media.py): their reference input is the
scaled 8-bit image.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch

from models.chat_template import ChatTemplate, user_turn
from models.errors import CheckpointError
from models.media import load_image
from models.mllama.image_processor import (
    MllamaImageProcessor,
    MllamaImageProcessorConfig,
    best_grid,
    fit_size,
    supported_grids,
)
from models.tokenizer import Tokenizer

CHECKPOINTS = {560: "Llama-3.2-11B-Vision-Instruct", 448: "Llama-3.2-11B-Vision"}
PROCESSOR_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.json")

# (height, width, mode, container). Sizes: degenerate, extreme aspect ratios, exact tile multiples, every
# grid shape at both tile sizes, up- and downscaling, and a few seeded random ones (appended below).
CASES = [
    (1, 1, "RGB", "PNG"), (10, 10, "RGB", "PNG"), (30, 4000, "RGB", "PNG"), (4000, 30, "RGB", "PNG"),
    (1120, 1120, "RGB", "PNG"), (600, 800, "RGB", "JPEG"), (800, 600, "RGBA", "PNG"), (448, 448, "RGB", "PNG"),
    (560, 560, "L", "PNG"), (559, 561, "RGB", "PNG"), (300, 1700, "LA", "PNG"), (1700, 300, "P", "PNG"),
    (400, 900, "P+transparency", "PNG"), (250, 250, "P+transparency", "GIF"), (900, 400, "1", "PNG"),
    (640, 480, "CMYK", "JPEG"), (333, 1337, "I;16", "PNG"), (120, 90, "I", "TIFF"), (211, 377, "F", "TIFF"),
    (480, 640, "EXIF6", "JPEG"), (2000, 1500, "RGB", "JPEG"), (1500, 2000, "RGB", "WEBP"),
    (1000, 3000, "RGB", "PNG"), (50, 2240, "L", "PNG"), (2240, 560, "RGB", "PNG"), (896, 1792, "RGB", "PNG"),
    (5, 700, "RGB", "PNG"),
]
_rng = np.random.default_rng(1234)
CASES += [(int(_rng.integers(1, 1600)), int(_rng.integers(1, 1600)), mode, "PNG")
          for mode in ("RGB", "RGBA", "L", "RGB", "P", "RGB", "LA")]


def case_id(case) -> str:
    h, w, mode, fmt = case
    return f"{w}x{h}-{mode}-{fmt}"


def encoded(case, seed: int) -> bytes:
    """Gradients, a hard edge and noise in `mode`, stored in `fmt`."""
    h, w, mode, fmt = case
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w * 255, y / h * 255, (x * 5 + y * 3) % 256], axis=-1) + rng.normal(0, 20, (h, w, 3))
    a[h // 3: h // 2] = (250, 10, 120)
    rgb = np.clip(a, 0, 255).astype(np.uint8)
    alpha = np.linspace(0, 255, w, dtype=np.float32)[None].repeat(h, 0).astype(np.uint8)
    image, save = PIL.Image.fromarray(rgb), {}
    if mode == "RGBA":
        image = PIL.Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "LA":
        image = PIL.Image.merge("LA", (image.convert("L"), PIL.Image.fromarray(alpha)))
    elif mode in ("P", "P+transparency"):
        image = image.quantize(32)
        save = {"transparency": 5} if mode == "P+transparency" else {}
    elif mode == "I;16":
        image = PIL.Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + rgb[..., 1] % 200).astype(np.uint16))
    elif mode == "I":
        image = PIL.Image.fromarray(rgb[..., 1].astype(np.int32))
    elif mode == "F":
        image = PIL.Image.fromarray(rgb[..., 2].astype(np.float32) * 0.97 + 0.4)
    elif mode == "EXIF6":  # stored sideways, displayed rotated 90 degrees clockwise
        exif = PIL.Image.Exif()
        exif[0x0112] = 6
        save = {"exif": exif.tobytes(), "quality": 90}
    elif mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def reference_input(data: bytes) -> PIL.Image.Image:
    """What a transformers user passes: the EXIF-oriented original (16-bit data scaled to 8 bits, our one
    deliberate difference)."""
    image = PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(data)))
    if image.mode == "I;16":
        return PIL.Image.fromarray(np.round(np.asarray(image) / 257.0).astype(np.uint8))
    return image


@pytest.fixture(scope="module")
def real_copies(shared_checkpoints, tmp_path_factory) -> dict[int, Path]:
    out = {}
    for tile, name in CHECKPOINTS.items():
        dest = tmp_path_factory.mktemp(f"mllama{tile}")
        for f in PROCESSOR_FILES:
            if (shared_checkpoints / name / f).exists():
                shutil.copy(shared_checkpoints / name / f, dest / f)
        out[tile] = dest
    return out


@pytest.fixture(scope="module")
def processors(real_copies):
    from transformers import AutoImageProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    out = {}
    for tile, path in real_copies.items():
        ref = AutoImageProcessor.from_pretrained(path)
        assert type(ref).__name__ == "MllamaImageProcessor" and ref.backend == "torchvision"
        out[tile] = (MllamaImageProcessor.from_dir(path), ref, MllamaImageProcessorPil.from_pretrained(path))
    return out


def test_corpus_is_large_and_covers_every_mode():
    assert len(CASES) >= 30
    assert {m for _, _, m, _ in CASES} >= {"RGB", "RGBA", "LA", "P", "P+transparency", "L", "I;16", "I", "F",
                                          "CMYK", "1", "EXIF6"}


@pytest.mark.parametrize("tile", sorted(CHECKPOINTS))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, tile, processors):
    ours, ref, _ = processors[tile]
    data = encoded(case, seed=case[0] * 31 + case[1])
    image = load_image(data)
    got = ours.preprocess(image, uint8=True)
    got_f = ours.preprocess(image, uint8=False)
    want = ref(images=[[reference_input(data)]], return_tensors="np")
    n = got.num_tiles
    assert n == want["num_tiles"][0][0] == got_f.num_tiles
    assert got.aspect_ratio_id == want["aspect_ratio_ids"][0, 0] == got_f.aspect_ratio_id
    np.testing.assert_array_equal(got.aspect_ratio_mask, want["aspect_ratio_mask"][0, 0])
    assert got.pixel_values.dtype == np.uint8 and got.pixel_values.shape == (n, 3, tile, tile)
    assert got_f.pixel_values.dtype == np.float32 and got_f.pixel_values.shape == (n, 3, tile, tile)
    px = want["pixel_values"][0, 0]
    assert not px[n:].any()  # the reference's remaining tiles are zero padding, which we do not emit
    np.testing.assert_allclose(got_f.pixel_values, px[:n], rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.normalize(got.pixel_values), px[:n], rtol=0, atol=1e-5)
    # what the engine runner does on the device: float32 (x / 255 - mean) / std
    mean = torch.tensor(ours.config.image_mean).view(3, 1, 1)
    std = torch.tensor(ours.config.image_std).view(3, 1, 1)
    device_style = ((torch.from_numpy(got.pixel_values).float() / 255.0 - mean) / std).numpy()
    np.testing.assert_allclose(device_style, px[:n], rtol=0, atol=1e-5)
    # the uint8 tiles are the reference's own resized values, before rescale/normalize
    raw = ref(images=[[reference_input(data)]], do_rescale=False, do_normalize=False, return_tensors="np")
    np.testing.assert_array_equal(got.pixel_values, raw["pixel_values"][0, 0, :n])


@pytest.mark.parametrize("case", CASES[:12], ids=case_id)
def test_pillow_backend_differs_by_at_most_one_level(case, processors):
    ours, _, pil = processors[560]
    data = encoded(case, seed=case[0] * 31 + case[1])
    got = ours.preprocess(load_image(data))
    want = pil(images=[[reference_input(data)]], do_rescale=False, do_normalize=False, return_tensors="np")
    n = got.num_tiles
    assert (n, got.aspect_ratio_id) == (want["num_tiles"][0][0], want["aspect_ratio_ids"][0, 0])
    diff = np.abs(got.pixel_values.astype(np.int16) - want["pixel_values"][0, 0, :n])
    assert diff.max() <= 1 and diff.mean() < 0.05


def test_geometry_matches_reference_functions():
    from transformers.models.mllama import image_processing_mllama as ref

    rng = np.random.default_rng(7)
    sizes = [(1, 1), (1, 100000), (100000, 1), (560, 560), (561, 560), (1120, 2240), (448, 1792)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(3000)]
    for tiles in (1, 2, 4, 6):
        assert list(supported_grids(tiles)) == ref.get_all_supported_aspect_ratios(tiles)
    for tile, tiles in ((560, 4), (448, 4), (560, 6), (448, 2)):
        for h, w in sizes:
            rows, cols = best_grid(h, w, tiles, tile)
            canvas = tuple(int(v) for v in ref.get_optimal_tiled_canvas(h, w, tiles, tile))
            assert (rows * tile, cols * tile) == canvas, (h, w, tile, tiles)
            want = ref.get_image_size_fit_to_canvas(h, w, canvas[0], canvas[1], tile)
            assert fit_size(h, w, *canvas, tile) == tuple(int(v) for v in want), (h, w, tile, tiles)


def test_config_follows_the_file(shared_checkpoints, tmp_path):
    for tile, name in CHECKPOINTS.items():
        cfg = MllamaImageProcessor.from_dir(shared_checkpoints / name).config
        assert (cfg.size, cfg.max_image_tiles, cfg.resample) == (tile, 4, 2)
        assert cfg.image_mean == (0.48145466, 0.4578275, 0.40821073)
        assert cfg.image_std == (0.26862954, 0.26130258, 0.27577711)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.size = 1  # type: ignore[misc]
    base = json.loads((shared_checkpoints / CHECKPOINTS[560] / "preprocessor_config.json").read_text())
    cfg = MllamaImageProcessorConfig.from_hf({**base, "max_image_tiles": 2, "size": {"height": 28, "width": 28}})
    out = MllamaImageProcessor(cfg).preprocess(PIL.Image.new("RGB", (300, 20), (9, 8, 7)))
    assert (out.num_tiles, out.aspect_ratio_id, out.pixel_values.shape) == (2, 2, (2, 3, 28, 28))
    assert out.aspect_ratio_mask.tolist() == [1, 1]
    for bad in ({"do_pad": False}, {"do_resize": False}, {"size": {"height": 560, "width": 448}},
                {"size": {"shortest_edge": 560}}, {"resample": 1}, {"max_image_tiles": 0}):
        with pytest.raises(CheckpointError):
            MllamaImageProcessorConfig.from_hf({**base, **bad})
    with pytest.raises(CheckpointError):
        MllamaImageProcessor.from_dir(tmp_path)


@pytest.mark.parametrize("prompt", ["Describe this image in one sentence.", "  What colour is the stripe? 🎨 "])
def test_full_processor_prompt_ids_and_pixels(prompt, real_copies, processors):
    from transformers import AutoProcessor

    path = real_copies[560]
    hf = AutoProcessor.from_pretrained(path)
    assert type(hf).__name__ == "MllamaProcessor"
    msgs = user_turn(prompt, num_images=1)
    data = encoded((700, 1000, "RGB", "JPEG"), seed=3)
    text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, date_string="26 Jul 2024")
    want = hf(text=text, images=[reference_input(data)], return_tensors="np")
    ours_text = ChatTemplate.from_dir(path).render(msgs, add_generation_prompt=True, date_string="26 Jul 2024")
    assert Tokenizer.from_dir(path).encode(ours_text) == want["input_ids"][0].tolist()
    got = processors[560][0].preprocess(load_image(data))
    n = got.num_tiles  # the full processor reports tiles only through the mask
    assert got.aspect_ratio_id == want["aspect_ratio_ids"][0, 0]
    np.testing.assert_array_equal(got.aspect_ratio_mask, want["aspect_ratio_mask"][0, 0])
    np.testing.assert_allclose(processors[560][0].normalize(got.pixel_values), want["pixel_values"][0, 0, :n],
                               rtol=0, atol=1e-5)
