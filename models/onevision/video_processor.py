"""LLaVA-OneVision video processor on CPU: sampled RGB frames -> S x S crops, and the `<video>` token count.

Contract: `OneVisionVideoProcessor.from_dir(dir)` reads `video_processor/preprocessor_config.json` (the
layout transformers 5 writes), else `video_preprocessor_config.json`, else the image
`preprocessor_config.json`, plus `config.json` for the SigLIP geometry. `preprocess(frames)` takes uint8
[F, H, W, 3] RGB frames (already sampled, e.g. by `models.video.decode_video`) and returns [F, 3, S, S]:
every frame resized to S x S (aspect ratio not kept) with torch's antialiased uint8 resize, exactly as
transformers' `LlavaOnevisionVideoProcessor`; uint8, or float32 normalized by `normalize`.
`num_tokens(F)` is `anyres.num_video_tokens` (196 pooled features per frame plus one newline at 384/14).
`num_frames` is the config's `num_frames` when it sets one and sampling is on, else `DEFAULT_NUM_FRAMES`
(the released checkpoints set none: their reference processor uses whatever frames it is given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.errors import CheckpointError, InputError
from models.onevision import anyres
from models.onevision.config import OneVisionConfig
from models.onevision.image_processor import (
    RESAMPLE_MODES,
    Normalizer,
    read_preprocessor_config,
    resize_uint8,
    square_size,
)

# LLaVA-OneVision's own video evaluations sample 32 frames; 32 * 196 + 1 = 6,273 tokens per video.
DEFAULT_NUM_FRAMES = 32
_CONFIG_NAMES = ("video_processor/preprocessor_config.json", "video_preprocessor_config.json",
                 "preprocessor_config.json")


class OneVisionVideoProcessor:
    def __init__(self, cfg: dict, model_cfg: OneVisionConfig):
        self.size = square_size(cfg)
        self.mode = RESAMPLE_MODES[int(cfg.get("resample", 3))]
        self.normalize = Normalizer(list(cfg.get("image_mean", [0.5, 0.5, 0.5])),
                                    list(cfg.get("image_std", [0.5, 0.5, 0.5])),
                                    float(cfg.get("rescale_factor", 1 / 255)),
                                    bool(cfg.get("do_rescale", True)), bool(cfg.get("do_normalize", True)))
        configured = cfg.get("num_frames") if cfg.get("do_sample_frames") else None
        self.num_frames = int(configured) if configured else DEFAULT_NUM_FRAMES
        self.image_size = model_cfg.vision.image_size
        self.patch_size = model_cfg.vision.patch_size
        if self.size != self.image_size:
            raise CheckpointError(f"video processor size {self.size} != vision image_size {self.image_size}")

    @classmethod
    def from_dir(cls, path: str | Path) -> OneVisionVideoProcessor:
        path = Path(path)
        found = next((path / name for name in _CONFIG_NAMES if (path / name).is_file()), None)
        if found is None:
            raise CheckpointError(f"{path} has no video processor config")
        return cls(read_preprocessor_config(found), OneVisionConfig.from_dir(path))

    def num_tokens(self, num_frames: int) -> int:
        return anyres.num_video_tokens(num_frames, self.image_size, self.patch_size)

    def preprocess(self, frames: np.ndarray, uint8: bool = True) -> np.ndarray:
        """[F, H, W, 3] uint8 RGB -> [F, 3, S, S] (uint8, or float32 normalized)."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise InputError(f"expected uint8 [F, H, W, 3] frames, got {getattr(frames, 'shape', type(frames))}")
        if min(frames.shape[:3]) == 0:
            raise InputError(f"empty video frames {frames.shape}")
        if not frames.flags.writeable:
            frames = frames.copy()
        # One batched resize of all frames in NCHW-contiguous layout, as the reference's grouped resize.
        chw = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        pixels = resize_uint8(chw, self.size, self.size, self.mode).numpy()
        return pixels if uint8 else self.normalize(pixels)
