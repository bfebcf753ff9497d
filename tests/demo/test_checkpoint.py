"""demo/checkpoint.py: a warm start into a deeper language model computes exactly what its source computes
(the old layers spread over the new depth, each new layer silent), and keeps every source tensor."""

import json
import shutil

import numpy as np
import pytest
import torch

from demo.checkpoint import init_from, save
from demo.examples import ExampleMaker, collate
from models.onevision.config import OneVisionConfig
from models.onevision.model import LlavaOnevisionForConditionalGeneration
from models.random_weights import random_init


def tiny(model_dir, tmp_path, layers: int, seed: int):
    """demo/model's metadata with a `layers`-deep, 32-wide random model, and that model."""
    d = tmp_path / f"tiny{layers}"
    shutil.copytree(model_dir, d)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["text_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                              max_window_layers=layers, num_attention_heads=2, num_key_value_heads=1)
    cfg["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    (d / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(d))
    model.language_model.reset_buffers()
    random_init(model, seed, fuse=False)
    return d, model


def test_a_grown_model_answers_as_its_source(model_dir, tmp_path, train_demo_script):
    src_dir, src = tiny(model_dir, tmp_path, layers=3, seed=0)
    for p in src.parameters():  # bf16 on disk: compare against what the file holds
        p.data = p.data.to(torch.bfloat16).float()
    save(src, src_dir, None, {})
    _, grown = tiny(model_dir, tmp_path, layers=7, seed=1)
    assert init_from(grown, src_dir) == [0, 3, 6]
    layers = grown.language_model.model.layers
    assert torch.equal(layers[3].mlp.up_proj.weight, src.language_model.model.layers[1].mlp.up_proj.weight)
    assert layers[1].self_attn.q_proj.weight.abs().sum() > 0  # a new layer keeps its random init...
    assert not layers[1].self_attn.o_proj.weight.any() and not layers[1].mlp.down_proj.weight.any()  # ...silent

    maker = ExampleMaker(src_dir)
    batch = collate([maker.scene(np.random.default_rng(2), turns=3)], pad_id=0)
    pre = json.loads((src_dir / "preprocessor_config.json").read_text())
    mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])
    with torch.no_grad():
        want, _ = train_demo_script.answer_logits(src, batch, torch.device("cpu"), mean, std)
        got, _ = train_demo_script.answer_logits(grown, batch, torch.device("cpu"), mean, std)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    _, shallow = tiny(model_dir, tmp_path, layers=2, seed=2)
    with pytest.raises(SystemExit, match="3 text layers cannot grow into 2"):
        init_from(shallow, src_dir)
