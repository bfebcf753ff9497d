"""Real shapes: our module tree built from each real config.json expects exactly the real tensor names,
with the shapes transformers' own model has at that config (both built on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch

from models.loader import expected_tensors
from models.mllama.config import MllamaConfig
from models.mllama.model import MllamaForConditionalGeneration

REAL = ["Llama-3.2-11B-Vision", "Llama-3.2-11B-Vision-Instruct", "Llama-3.2-90B-Vision-Instruct"]


@pytest.mark.parametrize("name", REAL)
def test_real_checkpoint_names_and_shapes(name, shared_checkpoints, hub_name):
    import transformers

    ckpt = shared_checkpoints / name
    real_names = set(json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"])
    with torch.device("meta"):
        ours = MllamaForConditionalGeneration(MllamaConfig.from_dir(ckpt))
        hf_cfg = transformers.AutoConfig.from_pretrained(ckpt)
        hf = transformers.MllamaForConditionalGeneration(hf_cfg)
    expected = expected_tensors(ours)
    assert set(expected) == real_names
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items()}
    renamed = {hub_name(k): shape for k, shape in hf_shapes.items()}
    assert {k: tuple(v) for k, v in expected.items()} == {k: tuple(renamed[k]) for k in expected}
