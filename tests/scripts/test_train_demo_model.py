"""scripts/train_demo_model.py: gradients reach every part of our OneVision modules (the loss on one fixed
example falls fast), the saved checkpoint loads in the engine's model class, and exported parts join back
byte for byte, with the metadata demo/model ships."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.checkpoint import COPIED
from demo.examples import ExampleMaker, collate
from models.onevision.config import OneVisionConfig
from models.onevision.model import LlavaOnevisionForConditionalGeneration
from models.random_weights import random_init
from tests.conftest import OV_REAL

SHIPPED = Path(__file__).resolve().parents[2] / "demo" / "model"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A copy of the 0.5B metadata (never write into ../shared)."""
    root = tmp_path_factory.mktemp("shared")
    shutil.copytree(OV_REAL, root / OV_REAL.name)
    return root


def test_one_example_is_learned(train_demo_script, shared, tmp_path):
    out = tmp_path / "model"
    train_demo_script.write_metadata(shared / train_demo_script.SOURCE, out)
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(out))
    model.language_model.reset_buffers()
    random_init(model, 0, fuse=False)
    maker = ExampleMaker(out)
    batch = collate([maker.scene(np.random.default_rng(1), turns=3)], pad_id=0)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = train_demo_script.loss_of(model, batch, torch.device("cpu"), mean, std)
        opt.zero_grad()
        loss.backward()
        if not losses:  # the vision tower, projector and newline all get gradients through the media path
            for name in ("vision_tower.vision_model.embeddings.patch_embedding.weight",
                         "multi_modal_projector.linear_1.weight", "image_newline"):
                assert model.get_parameter(name).grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses

    train_demo_script.save(model, out, tmp_path / "parts", {"steps": 8, "elapsed_s": 3.0})
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(loaded.image_newline, model.image_newline.detach().to(torch.bfloat16).float())
    assert (out / "model.safetensors").stat().st_size < 25 * 10**6
    train_demo_script.from_parts(tmp_path / "parts", tmp_path / "joined", shared)
    assert (tmp_path / "joined" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    # the metadata written beside new weights is what demo/model ships (its video processor samples 8 frames)
    for name in (*COPIED, "config.json", "video_processor/preprocessor_config.json"):
        assert (tmp_path / "joined" / name).read_bytes() == (SHIPPED / name).read_bytes(), name

    fresh = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(out))  # --resume from the parts
    assert train_demo_script.load_weights(fresh, tmp_path / "parts") == {"steps": 8, "elapsed_s": 3.0}
    assert torch.equal(fresh.image_newline, loaded.image_newline.to(fresh.image_newline.dtype))
