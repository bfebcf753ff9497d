"""LLaVA-OneVision "anyres" geometry and token accounting: pure integer/float math, no tensors.

Contract: every function here reproduces, bit for bit, the arithmetic of the reference processor and
model (transformers' LlavaOnevisionProcessor `_get_number_of_features` / `_get_unpadded_features`, and
the model's `pack_image_features` / `get_video_features`), so that the CPU side can tokenize a prompt with
the right number of `<image>` / `<video>` tokens before any GPU work, and the model's packing (which calls
`unpadded_grid` and `downscaled_grid` from here) cannot drift from that count.

Conventions: sizes are (height, width) in pixels; `image_size` is the SigLIP crop side (384), and
`patch_size` the ViT patch side (14), so one crop yields (image_size // patch_size)^2 features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")


def select_best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (h, w) canvas among `pinpoints` that keeps the most original pixels, ties -> least padding."""
    _check_size(height, width)
    best: tuple[int, int] | None = None
    best_effective = 0
    best_wasted = float("inf")
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        # The truncation order (width first, then height, each via int()) follows the reference exactly.
        down_w, down_h = int(width * scale), int(height * scale)
        effective = min(down_w * down_h, width * height)
        wasted = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best_effective, best_wasted, best = effective, wasted, (int(cand_h), int(cand_w))
    if best is None:
        raise ValueError("image_grid_pinpoints is empty")
    return best


def grid_shape(height: int, width: int, pinpoints: Sequence[Sequence[int]], patch_size: int) -> tuple[int, int]:
    """(rows, cols) of `patch_size`-sided crops covering the chosen canvas (patch_size = SigLIP image_size)."""
    canvas_h, canvas_w = select_best_resolution(height, width, pinpoints)
    return canvas_h // patch_size, canvas_w // patch_size


def num_patches(height: int, width: int, pinpoints: Sequence[Sequence[int]], image_size: int) -> int:
    """Crops the processor emits for one anyres image: ceil-divided canvas grid plus the base image."""
    canvas_h, canvas_w = select_best_resolution(height, width, pinpoints)
    return math.ceil(canvas_h / image_size) * math.ceil(canvas_w / image_size) + 1


def unpadded_grid(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """Feature rows/cols that survive removing the letterbox padding of an image resized into a grid.

    `grid_h`/`grid_w` are the full feature grid (crop rows * features per side, ...). Returns
    (top, kept_rows, left, kept_cols): the kept window is rows [top, top + kept_rows), cols likewise.
    """
    _check_size(height, width)
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - 2 * pad, 0, grid_w
    new_w = int(round(width * (grid_h / height), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - 2 * pad


def downscaled_grid(rows: int, cols: int, side: int, max_num_patches: int | None) -> tuple[int, int] | None:
    """Target (rows, cols) of the anyres_max_N bilinear downscale, or None when no downscale applies.

    `side` is the feature grid side of one crop (27 for 384/14).
    """
    if max_num_patches is None:
        return None
    ratio = math.sqrt(rows * cols / (max_num_patches * side**2))
    if ratio > 1.1:
        return int(rows // ratio), int(cols // ratio)
    return None


def parse_max_num_patches(vision_aspect_ratio: str | None) -> int | None:
    """"anyres_max_9" -> 9; a plain "anyres" (or None) means no downscale."""
    if not vision_aspect_ratio or vision_aspect_ratio == "anyres":
        return None
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix) or not vision_aspect_ratio[len(prefix):].isdigit():
        raise ValueError(f"unsupported vision_aspect_ratio {vision_aspect_ratio!r}")
    return int(vision_aspect_ratio[len(prefix):])


def num_image_tokens(height: int, width: int, pinpoints: Sequence[Sequence[int]], image_size: int,
                     patch_size: int, max_num_patches: int | None, *, multi_image: bool = False) -> int:
    """`<image>` tokens for one image of original size height x width (vision_feature_select_strategy "full").

    Single-image prompts: base crop features + unpadded (maybe downscaled) grid features + one newline per
    grid row. In prompts with several images the reference uses the base crop only, plus one newline.
    """
    _check_size(height, width)
    side = image_size // patch_size
    base = side * side
    if multi_image:
        return base + 1
    rows, cols = grid_shape(height, width, pinpoints, image_size)
    _, kept_rows, _, kept_cols = unpadded_grid(height, width, rows * side, cols * side)
    scaled = downscaled_grid(kept_rows, kept_cols, side, max_num_patches)
    if scaled is not None:
        kept_rows, kept_cols = scaled
    return base + kept_rows * kept_cols + kept_rows


def pooled_side(image_size: int, patch_size: int) -> int:
    """Per-frame video feature grid side after the 2x bilinear pooling (27 -> 14)."""
    return math.ceil((image_size // patch_size) / 2)


def num_video_tokens(num_frames: int, image_size: int, patch_size: int) -> int:
    """`<video>` tokens for one video: pooled features of every frame, then a single trailing newline."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    side = pooled_side(image_size, patch_size)
    return num_frames * side * side + 1


def max_image_tokens(pinpoints: Sequence[Sequence[int]], image_size: int, patch_size: int,
                     max_num_patches: int | None) -> int:
    """An upper bound on `num_image_tokens` over every image size (single-image prompts).

    For each pinpoint canvas the unpadded grid keeps either every row and some (centred, even-trimmed)
    columns or the reverse; enumerating all of those shapes covers every image that canvas can receive,
    so the bound is never below the true maximum (real 0.5B/7B configs: 8,829 vs ~8,765 found by scanning
    sizes; anyres_max_9 downscales only above 1.1x its budget, so the largest prompts sit just under it).
    """
    side = image_size // patch_size
    best = side * side + 1  # the multi-image form, when no canvas gives more
    for canvas_h, canvas_w in pinpoints:
        rows, cols = (canvas_h // image_size) * side, (canvas_w // image_size) * side
        shapes = {(rows - 2 * ((rows - k) // 2), cols) for k in range(rows + 1)}
        shapes |= {(rows, cols - 2 * ((cols - k) // 2)) for k in range(cols + 1)}
        for kept_rows, kept_cols in shapes:
            scaled = downscaled_grid(kept_rows, kept_cols, side, max_num_patches)
            if scaled is not None:
                kept_rows, kept_cols = scaled
            best = max(best, side * side + kept_rows * kept_cols + kept_rows)
    return best
