"""demo/cell_head.py and its targets: world.cell_labels per cell, collate's base crops, the masked loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demo import world
from demo.cell_head import CLASSES, CellHead
from demo.examples import ExampleMaker, collate


@pytest.fixture(scope="module")
def maker(model_dir):
    return ExampleMaker(model_dir)


def test_cell_labels_name_each_cell():
    scene = world.Scene(384, 384, "white", (world.Shape("star", "blue", "small", 0),
                                            world.Shape("circle", "red", "large", 4)), word="CAT")
    labels = world.cell_labels(scene)
    assert labels[0] == (1 + world.SHAPES.index("star"), 1 + list(world.COLORS).index("blue"), 1)
    assert labels[4] == (1 + world.SHAPES.index("circle"), 1 + list(world.COLORS).index("red"), 2)
    assert labels[1] == labels[5] == (0, 0, 0)  # empty
    assert labels[6:] == [(-1, -1, -1)] * 3  # the word's row: neither a shape nor empty


def test_collate_gives_each_scene_its_base_crop(maker):
    rng = np.random.default_rng(0)
    examples = [maker.scene(rng, turns=2), maker.clip(rng), maker.scene(rng, turns=2)]
    batch = collate(examples, pad_id=0, cfg=maker.cfg)
    assert batch["cell_labels"].shape == (3, 9, 3)
    assert (batch["cell_labels"][1] == -1).all()  # a clip has no cells
    assert batch["cell_labels"][2].tolist() == [list(c) for c in examples[2].cells]
    first = [0, examples[0].media.images[0].shape[0],
             examples[0].media.images[0].shape[0] + examples[1].media.videos[0].shape[0]]
    assert batch["base_crop"].tolist() == batch["crop_source"][first].tolist()
    distinct = batch["pixels"][batch["unique_crops"]]
    assert torch.equal(distinct[batch["base_crop"][2]], examples[2].media.images[0][0])


def test_the_loss_reads_cell_means_and_skips_unlabelled_cells():
    torch.manual_seed(0)
    head, side, hidden = CellHead(8, 27, width=16), 27, 8
    crops = torch.randn(3, side * side, hidden, requires_grad=True)
    base = torch.tensor([2, 0])
    labels = torch.full((2, 9, 3), -1, dtype=torch.long)
    labels[0, 4] = torch.tensor([1, 2, 1])  # one labelled cell: the centre of crop 2
    loss = head.loss(crops, base, labels)
    centre = crops[2].view(side, side, hidden)[9:18, 9:18].mean((0, 1))
    logits = head.mlp(centre).split(CLASSES)
    want = sum(F.cross_entropy(lg[None], t[None]) for lg, t in zip(logits, labels[0, 4], strict=True)) / 3
    torch.testing.assert_close(loss, want)
    loss.backward()
    grad = crops.grad.view(3, side, side, hidden).abs().sum(-1)
    assert grad[2, 9:18, 9:18].min() > 0
    grad[2, 9:18, 9:18] = 0
    assert grad.sum() == 0  # that cell's patches only: not crop 0 (its cells are unlabelled), not crop 1
    nothing = head.loss(crops, base, torch.full((2, 9, 3), -1, dtype=torch.long))  # no scene in the batch
    assert nothing.item() == 0.0
