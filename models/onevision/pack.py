"""Turn projected SigLIP crop features into the LLM feature sequences of one image or one video.

Contract (the reference model's `pack_image_features` / `get_video_features`, same arithmetic via
models/onevision/anyres.py, so `len(pack_image(...)) == anyres.num_image_tokens(...)` by construction):

- `pack_image(crops [P, side*side, C], size (h, w), ...)`:
  * single-image prompt (P = grid crops + 1): base crop features, then the grid's crops stitched into
    one [rows*side, cols*side] feature map, cropped to the original aspect ratio (unpadding), bilinearly
    shrunk when larger than anyres_max_N allows, and read row by row with `newline` appended to each row;
  * multi-image prompt (P = 1): the base crop features, then one `newline`.
- `pack_video(frames [F, side*side, C])`: each frame's map bilinearly pooled to ceil(side/2)^2, frames
  concatenated, then a single `newline` for the whole video.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.onevision import anyres


def pack_image(crops: torch.Tensor, size: tuple[int, int], newline: torch.Tensor, *,
               pinpoints: Sequence[Sequence[int]], image_size: int, side: int, max_num_patches: int | None,
               multi_image: bool) -> torch.Tensor:
    height, width = size
    newline = newline.to(crops.dtype)
    base = crops[0]
    if multi_image:
        if crops.shape[0] != 1:
            raise ValueError(f"an image of a multi-image prompt must be one base crop, got {crops.shape[0]}")
        return torch.cat((base, newline[None]), dim=0)
    rows, cols = anyres.grid_shape(height, width, pinpoints, image_size)
    if crops.shape[0] != rows * cols + 1:
        raise ValueError(f"image of size {height}x{width} needs {rows * cols + 1} crops "
                         f"({rows}x{cols} grid + base), got {crops.shape[0]}")
    channels = crops.shape[-1]
    grid = crops[1:].view(rows, cols, side, side, channels)
    # [C, rows*side, cols*side]: crop (r, c) lands at feature rows r*side.., cols c*side..
    fmap = grid.permute(4, 0, 2, 1, 3).reshape(channels, rows * side, cols * side)
    top, kept_rows, left, kept_cols = anyres.unpadded_grid(height, width, rows * side, cols * side)
    fmap = fmap[:, top: top + kept_rows, left: left + kept_cols]
    target = anyres.downscaled_grid(kept_rows, kept_cols, side, max_num_patches)
    if target is not None:
        fmap = F.interpolate(fmap[None], list(target), mode="bilinear")[0]
    c, h, w = fmap.shape
    fmap = torch.cat((fmap, newline[:, None, None].expand(c, h, 1)), dim=-1)
    return torch.cat((base, fmap.flatten(1, 2).transpose(0, 1)), dim=0)


def pack_video(frames: torch.Tensor, newline: torch.Tensor, *, image_size: int, patch_size: int) -> torch.Tensor:
    num_frames, _, channels = frames.shape
    side = image_size // patch_size
    pooled = anyres.pooled_side(image_size, patch_size)
    fmap = frames.view(num_frames, side, side, channels).permute(0, 3, 1, 2)
    fmap = F.interpolate(fmap, size=[pooled, pooled], mode="bilinear")
    tokens = fmap.permute(0, 2, 3, 1).reshape(num_frames * pooled * pooled, channels)
    return torch.cat((tokens, newline.to(tokens.dtype)[None]), dim=0)
