"""LLaVA-OneVision image processor on CPU: anyres crops (uint8 or normalized) and the `<image>` token count.

Contract: `OneVisionImageProcessor.from_dir(dir)` reads `preprocessor_config.json` (size, resample, rescale,
mean/std, `image_grid_pinpoints`) and `config.json` (SigLIP image/patch size, `vision_aspect_ratio`).
`preprocess(image)` reproduces transformers' default `LlavaOnevisionImageProcessor` (the torchvision
backend that `AutoImageProcessor` returns) for one image:
- single image of a prompt: the whole image resized to S x S (aspect ratio not kept) first, then the
  S x S crops, row-major, of the best `image_grid_pinpoints` canvas, into which the image was resized
  with its aspect ratio kept (output side = ceil of the scaled side, capped) and centred on zero padding;
- one of several images in a prompt (`multi_image=True`): the image centred on a square of
  int(mean * 255) grey, resized to S x S, a single crop.
Resizing is torch's antialiased bicubic on uint8 (the kernel torchvision itself calls on CPU for uint8
input), done before any rescale, so the uint8 crops are the reference's exact intermediate values and
`normalize(uint8 crops)` equals the reference's float output bit for bit. `num_tokens` comes from
`anyres.num_image_tokens` with the checkpoint's pinpoints and anyres_max_N limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from models.errors import CheckpointError, InputError
from models.onevision import anyres
from models.onevision.config import OneVisionConfig

# PIL resample codes as stored in preprocessor configs -> torch interpolate modes (antialiased).
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class OneVisionImage:
    pixel_values: np.ndarray  # [P, 3, S, S], uint8 or float32 normalized; base image first
    image_size: tuple[int, int]  # original (height, width)
    num_tokens: int  # `<image>` tokens this image expands to in the prompt
    multi_image: bool = False


def to_rgb_array(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]; transparency is composited onto white, as the reference's RGB conversion."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"expected a uint8 [H, W, 3] array, got {image.dtype} {image.shape}")
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, rgba)
    return np.array(image.convert("RGB"))


def resize_uint8(chw: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Antialiased resize of uint8 [..., 3, H, W]; same size returns the input, as torchvision does."""
    if tuple(chw.shape[-2:]) == (height, width):
        return chw
    lead = chw.shape[:-3]
    x = chw.reshape(-1, *chw.shape[-3:]).contiguous()
    y = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=True)
    return y.reshape(*lead, *y.shape[-3:])


class Normalizer:
    """uint8 -> float32 `(x * rescale - mean) / std`, computed in the reference's fused form."""

    def __init__(self, mean: list[float], std: list[float], rescale_factor: float, do_rescale: bool = True,
                 do_normalize: bool = True):
        self.do_rescale, self.do_normalize, self.rescale_factor = do_rescale, do_normalize, rescale_factor
        scale = 1.0 / rescale_factor if do_rescale else 1.0
        # The reference folds the rescale into mean/std (float32 tensor times a Python float), then subtracts
        # and divides; doing exactly that keeps the result bitwise equal.
        self.mean = (torch.tensor(mean, dtype=torch.float32) * scale).view(-1, 1, 1)
        self.std = (torch.tensor(std, dtype=torch.float32) * scale).view(-1, 1, 1)

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        as_numpy = isinstance(pixels, np.ndarray)
        x = torch.from_numpy(pixels) if as_numpy else pixels
        x = x.to(torch.float32)
        if self.do_normalize:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        elif self.do_rescale:
            x = x * self.rescale_factor
        return x.numpy() if as_numpy else x


def read_preprocessor_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not cfg.get("do_resize", True):
        raise CheckpointError(f"{path}: do_resize=false is not supported")
    if int(cfg.get("resample", 3)) not in RESAMPLE_MODES:
        raise CheckpointError(f"{path}: resample {cfg.get('resample')} is not supported")
    return cfg


def square_size(cfg: dict) -> int:
    size = cfg.get("size") or {"height": 384, "width": 384}
    side = size.get("shortest_edge") or min(size["height"], size["width"])
    return int(side)


class OneVisionImageProcessor:
    def __init__(self, cfg: dict, model_cfg: OneVisionConfig):
        self.size = square_size(cfg)
        self.mode = RESAMPLE_MODES[int(cfg.get("resample", 3))]
        mean = list(cfg.get("image_mean", [0.5, 0.5, 0.5]))
        std = list(cfg.get("image_std", [0.5, 0.5, 0.5]))
        self.normalize = Normalizer(mean, std, float(cfg.get("rescale_factor", 1 / 255)),
                                    bool(cfg.get("do_rescale", True)), bool(cfg.get("do_normalize", True)))
        pins = cfg.get("image_grid_pinpoints") or model_cfg.image_grid_pinpoints
        self.pinpoints = tuple((int(h), int(w)) for h, w in pins)
        self.pad_color = tuple(int(m * 255) for m in mean)
        self.image_size = model_cfg.vision.image_size
        self.patch_size = model_cfg.vision.patch_size
        self.max_num_patches = model_cfg.max_num_patches
        if self.size != self.image_size:
            raise CheckpointError(f"processor size {self.size} != vision image_size {self.image_size}")

    @classmethod
    def from_dir(cls, path: str | Path) -> OneVisionImageProcessor:
        path = Path(path)
        return cls(read_preprocessor_config(path / "preprocessor_config.json"), OneVisionConfig.from_dir(path))

    def num_tokens(self, height: int, width: int, multi_image: bool = False) -> int:
        return anyres.num_image_tokens(height, width, self.pinpoints, self.image_size, self.patch_size,
                                       self.max_num_patches, multi_image=multi_image)

    def _anyres_crops(self, chw: torch.Tensor) -> torch.Tensor:
        height, width = chw.shape[-2:]
        canvas_h, canvas_w = anyres.select_best_resolution(height, width, self.pinpoints)
        # Fit inside the canvas with the aspect ratio kept; the scaled side is rounded up (then capped).
        if canvas_w / width < canvas_h / height:
            new_h, new_w = min(math.ceil(height * canvas_w / width), canvas_h), canvas_w
        else:
            new_h, new_w = canvas_h, min(math.ceil(width * canvas_h / height), canvas_w)
        resized = resize_uint8(chw, new_h, new_w, self.mode)
        top, left = (canvas_h - new_h) // 2, (canvas_w - new_w) // 2
        canvas = torch.zeros((3, canvas_h, canvas_w), dtype=torch.uint8)
        canvas[:, top:top + new_h, left:left + new_w] = resized
        s = self.size
        crops = [resize_uint8(canvas[:, i:i + s, j:j + s], s, s, self.mode)
                 for i in range(0, canvas_h, s) for j in range(0, canvas_w, s)]
        base = resize_uint8(chw, s, s, self.mode)
        return torch.stack([base, *crops])

    def _square_crop(self, chw: torch.Tensor) -> torch.Tensor:
        height, width = chw.shape[-2:]
        side = max(height, width)
        canvas = torch.tensor(self.pad_color, dtype=torch.uint8).view(3, 1, 1).repeat(1, side, side)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[:, top:top + height, left:left + width] = chw
        return resize_uint8(canvas, self.size, self.size, self.mode)[None]

    def preprocess(self, image: PIL.Image.Image | np.ndarray, uint8: bool = True,
                   multi_image: bool = False) -> OneVisionImage:
        """Crops of one image (base first); `multi_image` for an image in a prompt with several images."""
        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        if height == 0 or width == 0:
            raise InputError(f"empty image {width}x{height}")
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        crops = self._square_crop(chw) if multi_image else self._anyres_crops(chw)
        pixels = crops.numpy()
        if not uint8:
            pixels = self.normalize(pixels)
        return OneVisionImage(pixels, (height, width), self.num_tokens(height, width, multi_image), multi_image)
