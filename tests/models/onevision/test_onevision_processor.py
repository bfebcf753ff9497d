"""OneVision CPU processors vs transformers' processors on the real 0.5B processor files.

Oracle: `AutoProcessor.from_pretrained(real 0.5B dir)` (LlavaOnevisionProcessor with the default,
torchvision-backed LlavaOnevisionImageProcessor and LlavaOnevisionVideoProcessor). Checked per input:
pixel values (exact; tolerance 1e-5), original image sizes, crop counts, `<image>`/`<video>` token counts
and the complete prompt ids after expansion, for 32 generated images (tiny, very wide/tall, several
modes, ones that trigger the anyres_max_9 downscale), several-image, video, mixed and text-only prompts,
and for videos encoded here with PyAV (5 codecs/containers, odd and 1-frame lengths) where the reference
samples from the fully decoded frame array.
"""

from __future__ import annotations

import fractions
import io
import os
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from models.chat_template import ChatTemplate, user_turn
from models.errors import PromptError
from models.onevision import anyres
from models.onevision.image_processor import OneVisionImageProcessor
from models.onevision.processor import expand_media_tokens
from models.onevision.video_processor import DEFAULT_NUM_FRAMES, OneVisionVideoProcessor
from models.tokenizer import Tokenizer
from models.video import decode_video

SHARED = Path(os.environ.get("VLMCAP_SHARED_CHECKPOINTS",
                             Path(__file__).resolve().parents[3].parent / "shared" / "checkpoints"))
OV_REAL = SHARED / "llava-onevision-qwen2-0.5b-ov-hf"
IMAGE_ID, VIDEO_ID = 151646, 151647

# (height, width, mode). Sizes span tiny (< one 384 crop), extreme aspect ratios, every grid shape
# class, and canvases large enough for the anyres_max_9 downscale (checked below that some do).
IMAGES = [
    (1, 1, "RGB"), (7, 9, "RGB"), (20, 300, "L"), (100, 100, "RGBA"), (383, 384, "RGB"), (384, 384, "P"),
    (385, 383, "RGB"), (50, 2000, "RGB"), (100, 1500, "LA"), (384, 2304, "RGB"), (120, 3000, "RGB"),
    (2000, 40, "RGB"), (1500, 100, "1"), (2304, 384, "RGB"), (3000, 150, "CMYK"), (480, 640, "RGB"),
    (640, 480, "RGBA"), (720, 1280, "RGB"), (1080, 1920, "RGB"), (1920, 1080, "L"), (500, 333, "RGB"),
    (333, 500, "PT"), (768, 768, "RGB"), (800, 1200, "RGB"), (1300, 1400, "RGB"), (1536, 1536, "RGB"),
    (2000, 2000, "RGB"), (700, 2100, "RGB"), (1200, 1700, "RGBA"), (1600, 900, "RGB"), (2400, 1800, "RGB"),
    (900, 2600, "RGB"),
]


def make_image(h: int, w: int, mode: str, seed: int) -> PIL.Image.Image:
    """Smooth gradients, sharp edges and noise: any resize difference shows up in the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / max(w, 1) * 255, y / max(h, 1) * 255, (x + y) % 64 * 4], axis=-1)
    a += rng.normal(0, 20, a.shape)
    a[h // 3:h // 2, :] = (255, 0, 128)
    rgb = np.clip(a, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = (np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)).astype(np.uint8)
        return PIL.Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    image = PIL.Image.fromarray(rgb)
    if mode == "PT":  # palette image with a transparent colour index
        image = image.quantize(16)
        image.info["transparency"] = 3
        return image
    return image.convert(mode) if mode != "RGB" else image


@pytest.fixture(scope="module")
def ref():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(OV_REAL)


@pytest.fixture(scope="module")
def ours():
    return (OneVisionImageProcessor.from_dir(OV_REAL), OneVisionVideoProcessor.from_dir(OV_REAL),
            Tokenizer.from_dir(OV_REAL), ChatTemplate.from_dir(OV_REAL))


def prompt_text(template: ChatTemplate, n_images: int, n_videos: int, text: str = "Describe this.") -> str:
    return template.render(user_turn(text, n_images, n_videos), add_generation_prompt=True)


def test_reference_is_the_default_torchvision_backend(ref):
    assert type(ref.image_processor).__name__ == "LlavaOnevisionImageProcessor"
    assert type(ref.video_processor).__name__ == "LlavaOnevisionVideoProcessor"


@pytest.mark.parametrize("i", range(len(IMAGES)))
def test_single_image_prompt_matches_reference(i, ref, ours):
    h, w, mode = IMAGES[i]
    image = make_image(h, w, mode, seed=i)
    improc, _, tok, template = ours
    text = prompt_text(template, 1, 0)
    r = ref(text=[text], images=[image], return_tensors="np")
    want = r["pixel_values"][0]
    got = improc.preprocess(image, uint8=False)
    got_u8 = improc.preprocess(image, uint8=True)
    assert got.pixel_values.dtype == np.float32 and got_u8.pixel_values.dtype == np.uint8
    assert got.pixel_values.shape == want.shape  # crop count: base + grid
    assert got.pixel_values.shape[0] == anyres.num_patches(h, w, improc.pinpoints, 384)
    np.testing.assert_allclose(got.pixel_values, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(improc.normalize(got_u8.pixel_values), want, rtol=0, atol=1e-5)
    assert got.image_size == tuple(r["image_sizes"][0].tolist()) == (h, w)
    ref_ids = r["input_ids"][0].tolist()
    assert got.num_tokens == ref_ids.count(IMAGE_ID)
    assert expand_media_tokens(tok.encode(text), [got.num_tokens], [], IMAGE_ID, VIDEO_ID) == ref_ids


def test_image_set_covers_the_downscale_and_tiny_cases(ours):
    improc = ours[0]
    side = 384 // 14
    downscaled = 0
    for h, w, _ in IMAGES:
        rows, cols = anyres.grid_shape(h, w, improc.pinpoints, 384)
        _, kr, _, kc = anyres.unpadded_grid(h, w, rows * side, cols * side)
        downscaled += anyres.downscaled_grid(kr, kc, side, improc.max_num_patches) is not None
    assert downscaled >= 6
    assert sum(1 for h, w, _ in IMAGES if max(h, w) < 384) >= 4
    assert sum(1 for h, w, _ in IMAGES if max(h, w) >= 10 * min(h, w)) >= 6


def test_several_images_in_one_prompt(ref, ours):
    improc, _, tok, template = ours
    images = [make_image(h, w, "RGB", seed=100 + k) for k, (h, w) in enumerate([(300, 500), (900, 200), (64, 64)])]
    text = prompt_text(template, 3, 0, "Compare these images.")
    r = ref(text=[text], images=[images], return_tensors="np")
    got = [improc.preprocess(im, uint8=False, multi_image=True) for im in images]
    for k, g in enumerate(got):
        assert g.pixel_values.shape == (1, 3, 384, 384)
        np.testing.assert_allclose(g.pixel_values, r["pixel_values"][k], rtol=0, atol=1e-5)
        assert g.image_size == tuple(r["image_sizes"][k].tolist())
    counts = [g.num_tokens for g in got]
    assert counts == [730, 730, 730]
    assert expand_media_tokens(tok.encode(text), counts, [], IMAGE_ID, VIDEO_ID) == r["input_ids"][0].tolist()


def test_text_only_prompt(ref, ours):
    _, _, tok, template = ours
    text = prompt_text(template, 0, 0, "What is the capital of France?")
    ids = expand_media_tokens(tok.encode(text), [], [], IMAGE_ID, VIDEO_ID)
    assert ids == ref(text=[text], return_tensors="np")["input_ids"][0].tolist()


def encode_video(fmt: str, codec: str, n: int, w: int, h: int, pix: str = "yuv420p", vfr: bool = False) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(n)
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, pix
        s.codec_context.gop_size = 5
        if vfr:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        y, x = np.mgrid[0:h, 0:w]
        for i in range(n):
            a = np.stack([(x * 3 + i * 11) % 256, (y * 2) % 256, (x + y + 40 * i) % 256], -1).astype(np.float32)
            a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            if vfr:
                f.pts, f.time_base = i * 40 + (i % 3) * 17, fractions.Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


VIDEOS = [  # (container, codec, frames, width, height, pixel format, variable frame rate)
    ("mp4", "mpeg4", 23, 160, 120, "yuv420p", False),
    ("matroska", "libx264", 17, 200, 96, "yuv420p", True),
    ("avi", "mjpeg", 9, 96, 160, "yuvj420p", False),
    ("webm", "libvpx-vp9", 13, 128, 128, "yuv420p", False),
    ("mp4", "libx264", 1, 100, 60, "yuv420p", False),
    ("mp4", "libx264", 31, 480, 270, "yuv420p", False),
]


@pytest.mark.parametrize("case", VIDEOS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}f")
@pytest.mark.parametrize("num_frames", [8])
def test_video_matches_reference_sampling_and_pixels(case, num_frames, ref):
    fmt, codec, n, w, h, pix, vfr = case
    data = encode_video(fmt, codec, n, w, h, pix, vfr)
    with av.open(io.BytesIO(data)) as c:
        everything = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(everything) == n
    vproc = OneVisionVideoProcessor.from_dir(OV_REAL)
    v = decode_video(data, num_frames)
    want_n = min(num_frames, n)  # the reference refuses more frames than the video has; we take them all
    r = ref.video_processor(videos=[everything], do_sample_frames=True, num_frames=want_n, return_metadata=True,
                            return_tensors="np")
    np.testing.assert_array_equal(v.indices, np.asarray(r["video_metadata"][0].frames_indices))
    got = vproc.preprocess(v.frames, uint8=True)
    assert got.dtype == np.uint8 and got.shape == (want_n, 3, 384, 384)
    want = r["pixel_values_videos"][0]
    np.testing.assert_allclose(vproc.preprocess(v.frames, uint8=False), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vproc.normalize(got), want, rtol=0, atol=1e-5)


def test_video_and_mixed_prompts(ref, ours):
    improc, vproc, tok, template = ours
    frames = decode_video(encode_video("mp4", "libx264", 12, 96, 64), 8).frames
    image = make_image(500, 700, "RGB", seed=7)
    for n_images in (0, 1):
        text = prompt_text(template, n_images, 1, "What happens?")
        kwargs = {"images": [image]} if n_images else {}
        r = ref(text=[text], videos=[frames], return_tensors="np", **kwargs)
        ref_ids = r["input_ids"][0].tolist()
        assert vproc.num_tokens(len(frames)) == ref_ids.count(VIDEO_ID) == 8 * 196 + 1
        np.testing.assert_allclose(vproc.preprocess(frames, uint8=False), r["pixel_values_videos"][0], atol=1e-5)
        image_counts = [improc.preprocess(image).num_tokens] if n_images else []
        ids = expand_media_tokens(tok.encode(text), image_counts, [vproc.num_tokens(len(frames))], IMAGE_ID, VIDEO_ID)
        assert ids == ref_ids


def test_video_processor_config(ours):
    vproc = ours[1]
    assert vproc.num_frames == DEFAULT_NUM_FRAMES  # the released config sets no num_frames
    assert vproc.size == 384 and vproc.num_tokens(1) == 197


def test_pil_backend_is_close_but_not_identical(ours):
    """transformers' PIL-backed processor resizes with Pillow, whose kernel is not torch's: measured up to 15
    uint8 levels apart (a crop upscaled in one axis and downscaled in the other), mostly 0-2. We follow the
    default (torchvision) processor exactly; against the PIL one only the geometry is equal and the values
    close."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    pil = LlavaOnevisionImageProcessorPil.from_pretrained(OV_REAL)
    improc = ours[0]
    for k, (h, w) in enumerate([(100, 200), (500, 333), (1080, 1920)]):
        image = make_image(h, w, "RGB", seed=200 + k)
        want = pil(images=[image], return_tensors="np")["pixel_values"][0]
        got = improc.preprocess(image, uint8=False).pixel_values
        assert got.shape == want.shape
        levels = np.abs(got - want) * 127.5  # std 0.5: one uint8 level is 2/255 after normalization
        assert levels.mean() < 0.5 and (levels > 2.5).mean() < 0.01


def test_placeholder_count_mismatch_is_a_prompt_error():
    ids = [1, IMAGE_ID, 2, VIDEO_ID, 3]
    assert expand_media_tokens(ids, [2], [3], IMAGE_ID, VIDEO_ID) == [1, IMAGE_ID, IMAGE_ID, 2] + [VIDEO_ID] * 3 + [3]
    with pytest.raises(PromptError):
        expand_media_tokens(ids, [], [3], IMAGE_ID, VIDEO_ID)
    with pytest.raises(PromptError):
        expand_media_tokens(ids, [2, 2], [3], IMAGE_ID, VIDEO_ID)
    with pytest.raises(PromptError):
        expand_media_tokens(ids, [2], [], IMAGE_ID, VIDEO_ID)
