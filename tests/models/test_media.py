"""models/media.py: untrusted bytes -> RGB image, against transformers' `convert_to_rgb` as the oracle.

Checked: every Pillow mode met in the wild, each encoded in a real container, decodes to exactly the pixels
transformers' RGB conversion gives for the EXIF-oriented original; 16-bit data is scaled (not clipped to
white, which is what the reference does — asserted too, so a change there is noticed); the eight EXIF
orientations against their definitions; bad bytes (empty, random, HTML, truncated JPEG/PNG/WebP/GIF,
corrupt data, EPS) give MediaDecodeError; bombs and absurd sizes give MediaTooLargeError from the header,
checked in a child process whose address space is capped at 512 MiB; Pillow's globals are left alone.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.ImageOps
import pytest

from models.errors import MediaDecodeError, MediaTooLargeError
from models.media import load_image

REPO = Path(__file__).resolve().parents[2]


def rgb_array(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w * 255, y / h * 255, (x * 7 + y * 3) % 256], axis=-1) + rng.normal(0, 25, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def encode(image: PIL.Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def make(mode: str, fmt: str, h: int = 37, w: int = 53, seed: int = 0) -> bytes:
    """An image of `mode` stored as `fmt`; transparent variants carry real, varying transparency."""
    rgb = rgb_array(h, w, seed)
    alpha = np.linspace(0, 255, w, dtype=np.float32)[None].repeat(h, 0).astype(np.uint8)
    base = PIL.Image.fromarray(rgb)
    if mode == "RGBA":
        return encode(PIL.Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), fmt)
    if mode == "LA":
        return encode(PIL.Image.merge("LA", (base.convert("L"), PIL.Image.fromarray(alpha))), fmt)
    if mode == "P+transparency":
        return encode(base.quantize(16), fmt, transparency=3)
    if mode == "L+transparency":
        gray = base.convert("L")
        return encode(gray, fmt, transparency=int(np.asarray(gray)[0, 0]))
    if mode == "RGB+transparency":
        return encode(base, fmt, transparency=tuple(int(v) for v in rgb[0, 0]))
    if mode == "P":
        return encode(base.quantize(64), fmt)
    if mode == "F":
        return encode(PIL.Image.fromarray(rgb[..., 0].astype(np.float32) * 0.93 + 0.25), fmt)
    if mode == "I":  # 32-bit integers holding 8-bit data
        return encode(PIL.Image.fromarray(rgb[..., 1].astype(np.int32)), fmt)
    return encode(base.convert(mode), fmt)


def reference_rgb(data: bytes) -> np.ndarray:
    from transformers.image_transforms import convert_to_rgb

    image = PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(data)))
    return convert_to_rgb(image, return_numpy=True)


MODES = [("RGB", "PNG"), ("RGB", "JPEG"), ("RGB", "WEBP"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("LA", "PNG"),
         ("L", "PNG"), ("L", "JPEG"), ("1", "PNG"), ("1", "BMP"), ("P", "PNG"), ("P", "GIF"),
         ("P+transparency", "PNG"), ("P+transparency", "GIF"), ("L+transparency", "PNG"),
         ("RGB+transparency", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("F", "TIFF"), ("I", "TIFF"),
         ("RGB", "TIFF"), ("RGB", "BMP"), ("RGB", "PPM")]


@pytest.mark.parametrize(("mode", "fmt"), MODES, ids=[f"{m}-{f}" for m, f in MODES])
def test_modes_match_reference_rgb_conversion(mode, fmt):
    data = make(mode, fmt, seed=len(mode) * 7 + len(fmt))
    opened = PIL.Image.open(io.BytesIO(data))
    assert opened.mode == mode.split("+")[0]  # the container really holds that mode
    image = load_image(data)
    assert image.mode == "RGB" and image.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(image), reference_rgb(data))
    if "transparency" in mode or mode in ("RGBA", "LA"):
        # composited onto white: the fully transparent parts are pure white
        assert (np.asarray(image) == 255).all(axis=-1).any()


@pytest.mark.parametrize("kind", ["I;16 PNG", "I;16 PNG transparency", "I TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(kind):
    rng = np.random.default_rng(5)
    values = rng.integers(0, 65536, (24, 40)).astype(np.uint16)
    values[0, 0] = 1234
    if kind == "I TIFF":
        data = encode(PIL.Image.fromarray(values.astype(np.int32)), "TIFF")
    else:
        save = {"transparency": 1234} if "transparency" in kind else {}
        data = encode(PIL.Image.fromarray(values), "PNG", **save)
    assert PIL.Image.open(io.BytesIO(data)).mode == kind.split()[0]
    got = np.asarray(load_image(data))
    want = np.round(values / 257.0).astype(np.uint8)
    if "transparency" in kind:
        want = np.where(values == 1234, 255, want).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=-1))
    # Why we differ from the reference here: its plain conversion clips, leaving a near-white image.
    assert (reference_rgb(data) == 255).mean() > 0.99


# Orientation tag -> how the stored pixels must be turned for display (EXIF 2.3, tag 0x0112).
ORIENTATIONS = {
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(orientation):
    rgb = rgb_array(30, 50, seed=orientation)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    image = load_image(encode(PIL.Image.fromarray(rgb), "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(np.asarray(image), ORIENTATIONS[orientation](rgb))


def test_exif_rotated_jpeg_is_upright_with_transparency_palette_too():
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(PIL.Image.fromarray(rgb_array(30, 50, 1)), "JPEG", exif=exif.tobytes(), quality=95)
    assert load_image(jpeg).size == (30, 50)
    np.testing.assert_array_equal(np.asarray(load_image(jpeg)), reference_rgb(jpeg))
    palette = PIL.Image.fromarray(rgb_array(30, 50, 2)).quantize(8)
    png = encode(palette, "PNG", exif=exif.tobytes(), transparency=2)
    assert load_image(png).size == (30, 50)
    np.testing.assert_array_equal(np.asarray(load_image(png)), reference_rgb(png))


def _good(fmt: str) -> bytes:
    return encode(PIL.Image.fromarray(rgb_array(120, 160, 3)), fmt)


def _corrupt_png() -> bytes:
    data = bytearray(_good("PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 20:start + 60] = bytes(40)  # damaged compressed stream (the CRC is wrong too)
    return bytes(data)


BAD = {
    "empty": b"",
    "random": np.random.default_rng(0).bytes(4096),
    "html": b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>nope</body></html>",
    "json": b'{"error": "AccessDenied"}',
    "jpeg-header-only": _good("JPEG")[:200],
    "jpeg-half": _good("JPEG")[: len(_good("JPEG")) // 2],
    "jpeg-missing-eoi": _good("JPEG")[:-2],
    "png-half": _good("PNG")[: len(_good("PNG")) // 2],
    "png-no-iend-no-last-idat": _good("PNG")[:-200],
    "png-corrupt-idat": _corrupt_png(),
    "webp-half": _good("WEBP")[: len(_good("WEBP")) // 2],
    "gif-half": _good("GIF")[: len(_good("GIF")) // 2],
    "gif-signature-only": b"GIF89a",
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_bytes_raise_decode_error(name):
    with pytest.raises(MediaDecodeError) as info:
        load_image(BAD[name])
    assert info.value.kind == "decode_error"


def test_non_bytes_and_global_truncation_flag(monkeypatch):
    with pytest.raises(MediaDecodeError):
        load_image("not bytes")  # type: ignore[arg-type]
    assert load_image(bytearray(_good("PNG"))).size == (160, 120)
    # If something in the process flipped Pillow's global, truncated files would pass: refuse loudly.
    monkeypatch.setattr(PIL.ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(_good("PNG"))


def png_declaring(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares width x height RGB pixels (a decompression bomb)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;")


# (bytes, max_pixels): Pillow's own error (> 2 * MAX_IMAGE_PIXELS), our header check below Pillow's
# limits, our check against a caller's small limit, and Pillow's bomb *warning* band made an error.
LARGE = {
    "png-100000x100000": (png_declaring(100_000, 100_000), 64_000_000),
    "png-9000x9000": (png_declaring(9000, 9000), 64_000_000),
    "png-1x70000000": (png_declaring(1, 70_000_000), 64_000_000),
    "gif-65535x65535": (gif_declaring(65535, 65535), 64_000_000),
    "png-small-limit": (png_declaring(200, 200), 10_000),
    "png-pillow-warning-band": (png_declaring(10_000, 10_000), 10**12),
}


@pytest.mark.parametrize("name", sorted(LARGE))
def test_too_large_is_refused_from_the_header(name):
    data, limit = LARGE[name]
    assert len(data) < 1000
    with pytest.raises(MediaTooLargeError) as info:
        load_image(data, max_pixels=limit)
    assert info.value.kind == "too_large"


def test_bombs_are_refused_without_allocating(tmp_path):
    """In a child limited to 512 MiB of address space, every bomb is refused with the typed error (a decode
    of any of them would need gigabytes and end in MemoryError or a kill instead)."""
    for name, (data, limit) in LARGE.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        (tmp_path / f"{name}.limit").write_text(str(limit))
    script = f"""
import resource, pathlib, sys
sys.path.insert(0, {str(REPO)!r})
from models.media import load_image
from models.errors import MediaTooLargeError
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
for f in sorted(pathlib.Path({str(tmp_path)!r}).glob('*.bin')):
    try:
        load_image(f.read_bytes(), max_pixels=int(f.with_suffix('.limit').read_text()))
    except MediaTooLargeError:
        print('refused', f.stem)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:-1]) == sorted(f"refused {n}" for n in LARGE)


def test_pillow_globals_and_warning_filters_are_untouched():
    before = (PIL.Image.MAX_IMAGE_PIXELS, PIL.ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    load_image(_good("JPEG"))
    with pytest.raises(MediaTooLargeError):
        load_image(png_declaring(10_000, 10_000), max_pixels=10**12)
    with pytest.raises(MediaDecodeError):
        load_image(BAD["png-half"])
    assert (PIL.Image.MAX_IMAGE_PIXELS, PIL.ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before
