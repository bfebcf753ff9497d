"""A training batch's media features as one gather (scripts/train_demo_model.py), worked out on the CPU.

`model.pack_media` builds each request's features with ~10 small tensor ops per image (grid permute, unpad
slice, newline concat), and as many again in the backward pass; at 48 examples per step those launches, not
the GPU, set the demo trainer's step time. Here collate works out, once per batch on a DataLoader worker,
where every media token comes from, so the trainer does one bilinear pooling call for all video frames and
one `index_select`:

    table = [image_newline]                                                        (row 0)
          + [encoded distinct crops, flattened: 1 + crop * side^2 + i * side + j]   (N_unique * side^2 rows)
          + [pooled video frames: after the crops, frame * pooled^2 + i * pooled + j] (F * pooled^2 rows)
    features = table[index]   # [media tokens of the batch, hidden], in placeholder order

The order is exactly `pack_media`'s (tests/demo/test_feature_index.py compares them value for value): per
example its images (base crop, then the unpadded grid row by row, each row followed by the newline), then its
videos (frames' pooled tokens, then one newline). Images that anyres would downscale (beyond
`max_num_patches`) and multi-image prompts are outside the demo world and raise.
"""

from __future__ import annotations

import torch

from models.onevision import anyres
from models.onevision.config import OneVisionConfig
from models.onevision.model import OneVisionMedia


def feature_index(media: list[OneVisionMedia], crop_source: torch.Tensor, cfg: OneVisionConfig) -> dict:
    """`feature_index` [tokens] into the table above and `video_frames` [F]: the distinct-crop rows of every
    video frame, in pooling order. `crop_source` maps each crop of the batch (collate's `pixels` order) to
    its distinct crop (`distinct_crops`)."""
    v = cfg.vision
    per_crop = v.side * v.side
    pooled = anyres.pooled_side(v.image_size, v.patch_size)
    source = crop_source.tolist()
    frames_base = 1 + (max(source) + 1 if source else 0) * per_crop  # where the pooled rows start
    out: list[torch.Tensor] = []
    video_frames: list[int] = []
    crop = 0
    for m in media:
        if len(m.images) > 1:
            raise ValueError("multi-image prompts are not part of the demo world")
        for x, (height, width) in zip(m.images, m.image_sizes, strict=True):
            out.append(_image_index(x.shape[0], height, width, source[crop: crop + x.shape[0]], cfg))
            crop += x.shape[0]
        for x in m.videos:
            first = frames_base + len(video_frames) * pooled * pooled
            out += [first + torch.arange(x.shape[0] * pooled * pooled), torch.zeros(1, dtype=torch.long)]
            video_frames += source[crop: crop + x.shape[0]]
            crop += x.shape[0]
    index = torch.cat(out) if out else torch.empty(0, dtype=torch.long)
    return {"feature_index": index, "video_frames": torch.tensor(video_frames, dtype=torch.long)}


def _image_index(n_crops: int, height: int, width: int, source: list[int], cfg: OneVisionConfig) -> torch.Tensor:
    side, per_crop = cfg.vision.side, cfg.vision.side * cfg.vision.side
    rows, cols = anyres.grid_shape(height, width, cfg.image_grid_pinpoints, cfg.vision.image_size)
    if n_crops != rows * cols + 1:
        raise ValueError(f"image of size {height}x{width} needs {rows * cols + 1} crops, got {n_crops}")
    top, kept_rows, left, kept_cols = anyres.unpadded_grid(height, width, rows * side, cols * side)
    if anyres.downscaled_grid(kept_rows, kept_cols, side, cfg.max_num_patches) is not None:
        raise ValueError(f"a {height}x{width} image is downscaled by anyres: not part of the demo world")
    crop_of = 1 + torch.tensor(source, dtype=torch.long) * per_crop  # [n_crops]: first table row of each crop
    base = crop_of[0] + torch.arange(per_crop)
    y = torch.arange(top, top + kept_rows)[:, None]  # feature-map row and column of every kept token
    x = torch.arange(left, left + kept_cols)[None, :]
    grid = crop_of[1 + (y // side) * cols + x // side] + (y % side) * side + x % side  # [kept_rows, kept_cols]
    grid = torch.cat((grid, torch.zeros((kept_rows, 1), dtype=torch.long)), dim=1)  # each row's newline: row 0
    return torch.cat((base, grid.flatten()))


def gather_features(crops: torch.Tensor, newline: torch.Tensor, batch: dict, pooled: int) -> torch.Tensor:
    """Features [tokens, hidden] from the distinct crops' features `crops` [N, side^2, hidden] and the
    batch's `feature_index` / `video_frames` (on the same device): what `pack_media` + `torch.cat` give."""
    n, per_crop, hidden = crops.shape
    side = int(per_crop ** 0.5)
    parts = [newline.to(crops.dtype)[None], crops.reshape(n * per_crop, hidden)]
    frames = batch["video_frames"]
    if frames.numel():
        fmap = crops.index_select(0, frames).view(-1, side, side, hidden).permute(0, 3, 1, 2)  # [F, H, s, s]
        fmap = torch.nn.functional.interpolate(fmap, size=[pooled, pooled], mode="bilinear")
        parts.append(fmap.permute(0, 2, 3, 1).reshape(-1, hidden))  # [F * pooled^2, H]
    return torch.cat(parts).index_select(0, batch["feature_index"])
