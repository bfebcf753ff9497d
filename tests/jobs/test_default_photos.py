"""Issue 17, done-when 1: a new user's own folder, captioned with OneVision at default settings.

Twelve photos of ordinary sizes and formats (up to a 6000x4000 camera JPEG; grayscale, RGBA PNG, WebP,
16-bit PNG, CMYK JPEG, an EXIF-rotated JPEG), one short MP4 and two corrupt files (a truncated JPEG, random
bytes named .jpg), all generated here, go through `jobs/caption.main` with the bundled OneVision demo model
and no context flag: the job exits 0, every good file is captioned (no error row, in particular no
`too_long`: the model-aware default `--max-model-len` must fit anyres_max_9's largest prompt), and each
corrupt file is a typed `decode_error` row. Only `--max-new-tokens` is lowered: decoding length is not the
point here. Runs in-process (the job starts its own local Ray; the test shuts it down again).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pytest
import ray
from PIL import Image

from jobs.caption import main

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "demo" / "model"


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients plus low-frequency blobs plus fine noise: compresses and resizes like a photo,
    not like a solid colour."""
    rng = np.random.default_rng(seed)
    # Low-resolution colour field upsampled (smooth), then per-pixel noise at a small amplitude.
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                     Image.BICUBIC)
    noise_side = (max(1, width // 4), max(1, height // 4))  # grain at a quarter resolution: fast at 24 MP
    grain = Image.fromarray(rng.integers(0, 48, (noise_side[1], noise_side[0], 3), dtype=np.uint8)).resize(
        (width, height), Image.NEAREST)
    arr = np.asarray(base, dtype=np.int16) + np.asarray(grain, dtype=np.int16) - 24
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def mp4(path: Path, width: int = 320, height: int = 240, frames: int = 8) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(photo(width, height, seed=100 + i))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def user_folder(folder: Path) -> tuple[list[str], list[str]]:
    """Writes the folder; returns (good file names, corrupt file names)."""
    folder.mkdir()
    files: dict[str, bytes] = {
        "IMG_1024x768.jpg": encode(photo(1024, 768, 1), "JPEG", quality=90),
        "portrait_946x1156.jpg": encode(photo(946, 1156, 2), "JPEG", quality=90),
        "phone_4032x3024.jpg": encode(photo(4032, 3024, 3), "JPEG", quality=85),
        "camera_6000x4000.JPG": encode(photo(6000, 4000, 4), "JPEG", quality=85),
        "tall_800x2400.jpg": encode(photo(800, 2400, 5), "JPEG"),
        "gray_1600x1200.jpg": encode(photo(1600, 1200, 6).convert("L"), "JPEG"),
        "logo_rgba_900x600.png": encode(_rgba(photo(900, 600, 7)), "PNG"),
        "web_1280x720.webp": encode(photo(1280, 720, 8), "WEBP", quality=80),
        "scan_16bit_700x500.png": encode(_sixteen_bit(photo(700, 500, 9)), "PNG"),
        "small_320x240.jpg": encode(photo(320, 240, 10), "JPEG"),
        "print_cmyk_1200x900.jpg": encode(photo(1200, 900, 11).convert("CMYK"), "JPEG"),
        "rotated_exif_1200x1600.jpg": _exif_rotated(photo(1600, 1200, 12)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    mp4(folder / "clip.mp4")
    whole = encode(photo(800, 600, 13), "JPEG")
    corrupt = {"truncated.jpg": whole[: len(whole) // 3],
               "random_bytes.jpg": np.random.default_rng(14).integers(0, 256, 5000, dtype=np.uint8).tobytes()}
    for name, data in corrupt.items():
        (folder / name).write_bytes(data)
    return sorted([*files, "clip.mp4"]), sorted(corrupt)


def _rgba(image: Image.Image) -> Image.Image:
    alpha = Image.linear_gradient("L").resize(image.size)  # transparent top to opaque bottom
    out = image.convert("RGBA")
    out.putalpha(alpha)
    return out


def _sixteen_bit(image: Image.Image) -> Image.Image:
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    return Image.fromarray(gray)  # mode I;16


def _exif_rotated(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display (a phone held upright)
    return encode(image, "JPEG", exif=exif)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    folder = tmp_path_factory.mktemp("user") / "photos"
    return (folder, *user_folder(folder))


def test_folder_generator_makes_what_it_says(photos):
    folder, good, corrupt = photos
    with Image.open(folder / "camera_6000x4000.JPG") as im:
        assert im.size == (6000, 4000) and im.format == "JPEG"
    with Image.open(folder / "scan_16bit_700x500.png") as im:
        assert im.mode == "I;16"
    with Image.open(folder / "print_cmyk_1200x900.jpg") as im:
        assert im.mode == "CMYK"
    with Image.open(folder / "rotated_exif_1200x1600.jpg") as im:
        assert im.getexif()[0x0112] == 6
    with Image.open(folder / "logo_rgba_900x600.png") as im:
        assert im.mode == "RGBA" and im.getextrema()[3][0] < im.getextrema()[3][1]
    with Image.open(folder / "web_1280x720.webp") as im:
        assert im.format == "WEBP"
    with Image.open(folder / "IMG_1024x768.jpg") as im:
        assert np.asarray(im).std() > 10  # not a solid colour
    assert len(good) == 13 and len(corrupt) == 2


@pytest.fixture
def own_ray_session():
    """The job calls ray.init itself; this test's session ends with the test (other tests in this process
    expect no Ray)."""
    assert not ray.is_initialized()
    yield
    ray.shutdown()


def test_ordinary_photos_video_and_corrupt_files_at_default_settings(photos, tmp_path, capsys, own_ray_session):
    folder, good, corrupt = photos
    out = tmp_path / "out"
    status = main(["--model", str(DEMO_MODEL), "--input", str(folder), "--output", str(out),
                   "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    rows = {r["id"]: r for r in pds.dataset(str(out), format="parquet").to_table().to_pylist()}
    assert sorted(rows) == sorted(good + corrupt)  # one row per file, ids relative to the folder
    failed = {i: rows[i]["error"] for i in good if rows[i]["error"] is not None or rows[i]["finish_reason"] == "error"}
    assert not failed, failed  # no too_long, no decode error on any ordinary photo or the video
    for i in good:
        assert rows[i]["finish_reason"] in ("stop", "length") and rows[i]["num_generated_tokens"] >= 1, rows[i]
        assert rows[i]["num_prompt_tokens"] > 0
    for i in corrupt:
        assert rows[i]["finish_reason"] == "error", rows[i]
        assert rows[i]["error"].startswith("decode_error"), rows[i]["error"]
    # The large photos really took the anyres path (several crops): their prompts are far beyond the
    # 4,096 tokens the old default allowed, yet they fit.
    assert rows["camera_6000x4000.JPG"]["num_prompt_tokens"] > 4096
    assert "too_long" not in captured.out + captured.err
