"""A training-only probe that teaches the demo model's vision features what is in each grid cell.

The answers alone supervise shape identity weakly: a question names one shape of a scene, and "How many
squares are there?" says nothing about where the square is. `CellHead` reads the projected features of a
scene's base crop (the whole image resized to one crop, so the 3x3 grid of demo/world.py is 9x9 patches per
cell at 27x27 patches), averages each cell's patches and predicts that cell's shape, colour and size
(`world.cell_labels`): every cell of every scene is a target. It is trained beside the model
(scripts/train_demo_model.py `--cell-loss-weight`) and never saved: the checkpoint keeps the OneVision format.

    crops [N, side^2, hidden] --index base crops--> [B, side, side, hidden] --cell means--> [B, 9, hidden]
      --MLP--> shape (5), colour (9), size (3) logits; cross-entropy over labelled cells (label -1: ignored)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from demo import world

CLASSES = (len(world.SHAPES) + 1, len(world.COLORS) + 1, len(world.SIZES) + 1)  # 0: an empty cell
GRID = 3


class CellHead(nn.Module):
    def __init__(self, hidden: int, side: int, width: int = 128):
        super().__init__()
        if side % GRID:
            raise ValueError(f"{side} patches per side do not split into {GRID} cells")
        self.side = side
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, sum(CLASSES)))

    def forward(self, crops: torch.Tensor, base_crop: torch.Tensor) -> list[torch.Tensor]:
        """Per-attribute logits [B, 9, classes] for the crops at `base_crop` [B] of `crops` [N, side^2, H]."""
        x = crops.index_select(0, base_crop)
        b, _, hidden = x.shape
        x = x.view(b, self.side, self.side, hidden).permute(0, 3, 1, 2)  # [B, H, side, side]
        x = F.avg_pool2d(x, self.side // GRID).flatten(2).transpose(1, 2)  # [B, 9, H], cells row-major
        return list(self.mlp(x).split(CLASSES, dim=-1))

    def loss(self, crops: torch.Tensor, base_crop: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the three attributes of the cross-entropy over labelled cells (`labels` [B, 9, 3], -1:
        ignored); 0 when no cell is labelled (a batch without scenes), with no host sync either way."""
        total = crops.new_zeros((), dtype=torch.float32)
        for k, logits in enumerate(self.forward(crops, base_crop)):
            target = labels[..., k].flatten()
            summed = F.cross_entropy(logits.flatten(0, 1).float(), target, ignore_index=-1, reduction="sum")
            total = total + summed / (target >= 0).sum().clamp(min=1)
        return total / len(CLASSES)
