"""Llama-3.2-Vision (Mllama) image processor on CPU: one RGB image -> its real tiles, aspect-ratio id and mask.

Contract: `MllamaImageProcessor.from_dir(dir)` reads `preprocessor_config.json` (tile size, max tiles,
resample, rescale factor, mean/std; the base model's file says 448 px, the instruct one 560 — the file
decides) into a frozen `MllamaImageProcessorConfig`. `preprocess(image, uint8=True)` reproduces
transformers' `MllamaImageProcessor` for one image — the torchvision backend, which is what
`AutoImageProcessor`/`AutoProcessor` return (transformers 5.x); `MllamaImageProcessorPil` resizes with
Pillow instead and differs by one uint8 level on ~1% of resized pixels:
- canvas: among the (rows, cols) tile grids with rows * cols <= max_image_tiles, the one needing the
  smallest upscale, else the smallest downscale; ties go to the smallest canvas;
- the image is resized (torch's antialiased bilinear on uint8, as torchvision on CPU) to fit the canvas
  with its aspect ratio kept and neither side below one tile unless the canvas is smaller, padded with
  zeros at the bottom/right, and split into tiles row-major;
- `pixel_values` holds only the real tiles [num_tiles, 3, tile, tile]: uint8 (the exact resized values the
  reference rescales) or float32 `(x * rescale_factor - mean) / std`; `normalize(uint8 tiles)` turns the
  first into the second, so both paths give the same model input;
- `aspect_ratio_id` is 1-based into that grid list (0 is the reference's batch padding), `aspect_ratio_mask`
  [max_image_tiles] has ones on the real tiles.
Input images should come from `models.media.load_image` (RGB, oriented); other modes go through the same
RGB conversion.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from models.errors import CheckpointError, InputError
from models.media import to_rgb

# PIL resample codes as stored in preprocessor configs -> torch interpolate modes.
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class MllamaImageProcessorConfig:
    size: int  # tile side in pixels (square tiles)
    max_image_tiles: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    resample: int = 2  # PIL code as in the file: 2 bilinear, 3 bicubic

    @classmethod
    def from_hf(cls, cfg: dict) -> MllamaImageProcessorConfig:
        if not cfg.get("do_resize", True) or not cfg.get("do_pad", True):
            raise CheckpointError("Mllama preprocessing needs do_resize and do_pad (the reference refuses both off)")
        size = cfg.get("size") or {}
        if "height" not in size or size.get("height") != size.get("width"):
            raise CheckpointError(f"Mllama tiles must be square {{height, width}}, got size={size}")
        tiles = int(cfg.get("max_image_tiles", 4))
        if tiles <= 0:
            raise CheckpointError(f"max_image_tiles must be positive, got {tiles}")
        resample = int(cfg.get("resample", 2))
        if resample not in RESAMPLE_MODES:
            raise CheckpointError(f"resample {resample} is not supported (only bilinear 2 and bicubic 3)")
        return cls(size=int(size["height"]), max_image_tiles=tiles,
                   image_mean=tuple(float(m) for m in cfg.get("image_mean", (0.5, 0.5, 0.5))),
                   image_std=tuple(float(s) for s in cfg.get("image_std", (0.5, 0.5, 0.5))),
                   rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
                   do_rescale=bool(cfg.get("do_rescale", True)), do_normalize=bool(cfg.get("do_normalize", True)),
                   resample=resample)


@dataclass(frozen=True)
class MllamaImageInputs:
    pixel_values: np.ndarray  # [num_tiles, 3, size, size], uint8 or float32
    aspect_ratio_id: int  # 1-based index into supported_grids(max_image_tiles)
    num_tiles: int
    aspect_ratio_mask: np.ndarray  # [max_image_tiles] int64, 1 on real tiles


@lru_cache(maxsize=16)
def supported_grids(max_tiles: int) -> tuple[tuple[int, int], ...]:
    """(rows, cols) tile grids in the reference's order; aspect_ratio_id - 1 indexes this list."""
    return tuple((a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1) if a * b <= max_tiles)


def best_grid(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
    """The (rows, cols) grid whose canvas the image fits with the least upscale, else the least downscale."""
    grids = supported_grids(max_tiles)
    # The scale that fits the image inside a canvas is its tighter side's ratio.
    scales = [min(rows * tile / height, cols * tile / width) for rows, cols in grids]
    up = [s for s in scales if s >= 1]
    chosen = min(up) if up else max(scales)
    candidates = [g for g, s in zip(grids, scales, strict=True) if s == chosen]
    return min(candidates, key=lambda g: g[0] * g[1])  # first smallest area, as the reference's argmin


def fit_size(height: int, width: int, canvas_h: int, canvas_w: int, tile: int) -> tuple[int, int]:
    """Resized (height, width): each target side clamped to [tile, canvas], the aspect ratio kept by
    flooring the other side (at least 1 px)."""
    target_w = min(max(width, tile), canvas_w)
    target_h = min(max(height, tile), canvas_h)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def _native_uint8(mode: str) -> bool:
    # torchvision resizes uint8 directly only where torch has the vectorised uint8 kernel (bilinear: AVX2,
    # AVX512, ARM); elsewhere it goes through float32 and rounds. Its choice decides the reference's values.
    if mode != "bilinear":
        return True
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64"))


def resize_uint8(chw: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Antialiased resize of a uint8 [3, H, W] array with torch's kernel, as torchvision does on CPU."""
    if chw.shape[1:] == (height, width):
        return chw
    x = torch.from_numpy(np.ascontiguousarray(chw))[None]
    if _native_uint8(mode):
        y = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=True)
    else:
        y = F.interpolate(x.float(), size=(height, width), mode=mode, align_corners=False, antialias=True)
        y = y.clamp_(0, 255).round_().to(torch.uint8)
    return y[0].numpy()


class MllamaImageProcessor:
    def __init__(self, config: MllamaImageProcessorConfig):
        self.config = config
        mean = np.asarray(config.image_mean, dtype=np.float64).reshape(3, 1, 1)
        std = np.asarray(config.image_std, dtype=np.float64).reshape(3, 1, 1)
        self._mean, self._std = mean, std

    @classmethod
    def from_dir(cls, path: str | Path) -> MllamaImageProcessor:
        file = Path(path) / "preprocessor_config.json"
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {file}: {e}") from e
        return cls(MllamaImageProcessorConfig.from_hf(cfg))

    def normalize(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 tiles [..., 3, H, W] -> float32 model input, computed in float64 and rounded once."""
        c = self.config
        x = np.asarray(tiles, dtype=np.float64)
        if c.do_rescale:
            x = x * c.rescale_factor
        if c.do_normalize:
            x = (x - self._mean) / self._std
        return x.astype(np.float32)

    def preprocess(self, image: PIL.Image.Image, uint8: bool = True) -> MllamaImageInputs:
        c = self.config
        if image.mode != "RGB":
            image = to_rgb(image)
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InputError(f"empty image {width}x{height}")
        rows, cols = best_grid(height, width, c.max_image_tiles, c.size)
        new_h, new_w = fit_size(height, width, rows * c.size, cols * c.size, c.size)
        chw = np.array(image, dtype=np.uint8).transpose(2, 0, 1)  # a writable copy: torch shares it
        canvas = np.zeros((3, rows * c.size, cols * c.size), dtype=np.uint8)
        canvas[:, :new_h, :new_w] = resize_uint8(chw, new_h, new_w, RESAMPLE_MODES[c.resample])
        tiles = (canvas.reshape(3, rows, c.size, cols, c.size).transpose(1, 3, 0, 2, 4)
                 .reshape(rows * cols, 3, c.size, c.size))
        tiles = np.ascontiguousarray(tiles)
        num_tiles = rows * cols
        mask = np.zeros(c.max_image_tiles, dtype=np.int64)
        mask[:num_tiles] = 1
        return MllamaImageInputs(pixel_values=tiles if uint8 else self.normalize(tiles),
                                 aspect_ratio_id=supported_grids(c.max_image_tiles).index((rows, cols)) + 1,
                                 num_tiles=num_tiles, aspect_ratio_mask=mask)
