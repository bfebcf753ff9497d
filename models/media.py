"""Untrusted image bytes -> an RGB PIL image, or a typed error.

Contract: `load_image(data, max_pixels=...)`
- refuses empty input, non-images (random bytes, HTML...), formats outside `SAFE_FORMATS`, and truncated or
  corrupt files with `MediaDecodeError`; pixels are always fully decoded here (`load()`), so a truncated
  file fails now instead of yielding a half-grey image later;
- refuses images whose *declared* size exceeds `max_pixels` with `MediaTooLargeError` after reading only
  the header, before any pixel is decoded; Pillow's own decompression-bomb warning is an error too;
- applies the EXIF orientation;
- returns a loaded RGB image equal to what transformers' `convert_to_rgb` makes of the (oriented) original:
  transparency (alpha bands or a `transparency` key: P, LA, PA, RGBA, L/RGB with tRNS) composited onto
  white, every other mode through Pillow's `convert("RGB")` (L, 1, CMYK, F, YCbCr...).
- One deliberate difference: 16-bit images (I;16*, and I whose values exceed 8 bits) are scaled to 8 bits
  (v * 255 / 65535, rounded). Pillow's plain conversion — hence the reference — clips them, turning almost
  every pixel white (see ../shared/RELIABILITY.md).
Pillow's global settings (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) are read, never changed; finding
LOAD_TRUNCATED_IMAGES switched on by someone else is a RuntimeError (a process bug, not a bad row).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.ImageOps

from models.errors import MediaDecodeError, MediaTooLargeError

# Raster formats a caption job can meet; never EPS/PS (Pillow hands those to Ghostscript) or other
# rarely-audited parsers. Camera MPO files open through the JPEG plugin.
SAFE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO", "AVIF")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _available_formats() -> tuple[str, ...]:
    # `Image.open(formats=...)` fails on a name whose plugin is not registered yet (AVIF in a Pillow
    # built without it): register all plugins once, then keep the safe ones this Pillow can open.
    PIL.Image.init()
    return tuple(f for f in SAFE_FORMATS if f in PIL.Image.OPEN)


def _open(data: bytes, max_pixels: int) -> PIL.Image.Image:
    """Header, size check, then the full decode of the first frame."""
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=_available_formats())
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
        raise MediaTooLargeError(f"image refused by the decompression-bomb check: {e}") from e
    except MemoryError:
        raise
    except Exception as e:  # Pillow's parsers raise many unrelated types on hostile input
        raise MediaDecodeError(f"not a decodable image ({type(e).__name__}: {e})") from e
    width, height = image.size
    if width <= 0 or height <= 0:
        raise MediaDecodeError(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise MediaTooLargeError(f"image declares {width}x{height} = {width * height} pixels "
                                 f"(limit {max_pixels})")
    if PIL.ImageFile.LOAD_TRUNCATED_IMAGES:
        # Something in this process flipped Pillow's global, so truncated files would decode "fine": that is a
        # bug of the process, not of this row's input, hence not an InputError.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode untrusted images")
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as e:
        raise MediaDecodeError(f"image data is truncated or corrupt ({type(e).__name__}: {e})") from e
    return image


def _sixteen_to_eight(image: PIL.Image.Image) -> PIL.Image.Image:
    """Single-band 16-bit data as an 8-bit L (or LA when a transparent value is declared) image."""
    values = np.asarray(image).astype(np.int64)
    if image.mode == "I" and values.max(initial=0) <= 255:
        return image  # 8-bit data in a wide mode: the plain conversion loses nothing
    scaled = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    gray = PIL.Image.fromarray(scaled, mode="L")
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return PIL.Image.merge("LA", (gray, PIL.Image.fromarray(alpha, mode="L")))
    return gray


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB conversion as the reference's `convert_to_rgb`, except that 16-bit data is scaled, not clipped."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        image = _sixteen_to_eight(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(data: bytes, *, max_pixels: int = 64_000_000) -> PIL.Image.Image:
    """Decode untrusted bytes into an EXIF-oriented RGB image (see the module docstring)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MediaDecodeError(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise MediaDecodeError("image is empty (0 bytes)")
    # The filter makes Pillow's bomb *warning* (between MAX_IMAGE_PIXELS and twice that) an exception for
    # this call only; the warnings state is restored on exit.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        image = _open(bytes(data), max_pixels)
        try:
            image = PIL.ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
        except MemoryError:
            raise
        except Exception as e:
            raise MediaDecodeError(f"cannot convert {image.mode} image to RGB ({type(e).__name__}: {e})") from e
    rgb.load()
    return rgb
