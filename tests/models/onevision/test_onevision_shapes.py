"""Real shapes and both tensor-name layouts of OneVision.

- 7B / 72B (and 7B-si): our module tree from the real config.json expects exactly the real index's tensor
  names (hub layout, `vision_tower.vision_model.*`), with the shapes of transformers' own model at that
  config (both built on the meta device).
- 0.5B: no index ships; the names are those transformers 5 writes (`vision_tower.*`, tied lm_head not
  written). Checked against transformers' meta model, and the naming rule itself against a real
  `save_pretrained` of the tiny checkpoint.
- Both layouts load: the tiny checkpoint rewritten with hub names gives identical logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.generate import prompt_logits
from models.loader import expected_tensors
from models.onevision.config import OneVisionConfig
from models.onevision.model import LlavaOnevisionForConditionalGeneration

HUB_INDEXED = ["llava-onevision-qwen2-7b-ov-hf", "llava-onevision-qwen2-7b-si-hf", "llava-onevision-qwen2-72b-ov-hf"]


def hf_written_name(name: str, flat: bool) -> str:
    """transformers' in-memory name -> checkpoint name, in the flat (5.x save) or hub (nested) layout."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    if name == "lm_head.weight":
        return "language_model.lm_head.weight"
    name = name.removeprefix("model.")
    if name.startswith("vision_tower.") and not flat:
        return "vision_tower.vision_model." + name[len("vision_tower."):]
    return name


def build_both(ckpt, flat: bool):
    import transformers

    with torch.device("meta"):
        ours = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(ckpt), flat_vision_names=flat)
        hf = transformers.LlavaOnevisionForConditionalGeneration(transformers.AutoConfig.from_pretrained(ckpt))
    tied = set(getattr(hf, "all_tied_weights_keys", None) or {}) if hf.config.tie_word_embeddings else set()
    hf_shapes = {hf_written_name(k, flat): tuple(v.shape) for k, v in hf.state_dict().items() if k not in tied}
    return {k: tuple(v) for k, v in expected_tensors(ours).items()}, hf_shapes


@pytest.mark.parametrize("name", HUB_INDEXED)
@pytest.mark.parametrize("flat", [False, True])
def test_real_index_names_and_shapes(name, flat, shared_checkpoints):
    ckpt = shared_checkpoints / name
    ours, hf_shapes = build_both(ckpt, flat)
    assert ours == hf_shapes
    if not flat:
        real = set(json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"])
        assert set(ours) == real
        assert "language_model.lm_head.weight" in ours  # 7B/72B do not tie


@pytest.mark.parametrize("flat", [True, False])
def test_half_b_names_and_shapes(flat, shared_checkpoints):
    ours, hf_shapes = build_both(shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf", flat)
    assert ours == hf_shapes
    assert "language_model.lm_head.weight" not in ours  # tied through text_config.tie_word_embeddings
    assert ours["language_model.model.embed_tokens.weight"] == (152000, 896)
    assert sum(k.startswith("vision_tower.") and ".layers.0." in k for k in ours) > 0
    assert max(int(k.split(".layers.")[1].split(".")[0]) for k in ours if "encoder.layers." in k) == 25


def test_tiny_save_pretrained_names_are_flat(tiny_ov_dir):
    with safe_open(tiny_ov_dir / "model.safetensors", framework="pt") as f:
        written = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    with torch.device("meta"):
        ours = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(tiny_ov_dir), flat_vision_names=True)
    assert {k: tuple(v) for k, v in expected_tensors(ours).items()} == written
    assert LlavaOnevisionForConditionalGeneration.has_flat_vision_names(written)


def test_hub_layout_loads_identically(tiny_ov_dir, our_tiny_ov, tmp_path):
    import shutil

    for f in tiny_ov_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    with safe_open(tiny_ov_dir / "model.safetensors", framework="pt") as f:
        tensors = {hf_written_name("model." + k, flat=False) if k.startswith("vision_tower.") else k: f.get_tensor(k)
                   for k in f.keys()}  # noqa: SIM118
    save_file(tensors, tmp_path / "model.safetensors")
    hub = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert not hub.vision_tower.flat and our_tiny_ov.vision_tower.flat
    ids = [151644, 872, 198, 151646, 151646, 1000, 2000]
    pixels = torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(0))
    from models.onevision.model import OneVisionMedia

    def media():  # two images -> base crop only each: 49 + 1 tokens per image
        return [OneVisionMedia(images=[pixels, pixels * 0.5], image_sizes=[(42, 42), (42, 42)])]

    ids = ids[:3] + [151646] * 100 + ids[5:]
    a = prompt_logits(hub, [ids], media())
    b = prompt_logits(our_tiny_ov, [ids], media())
    assert torch.equal(a, b)


def test_registry_and_tied_random_weights(shared_checkpoints, tiny_ov_dir, our_tiny_ov):
    from models.random_weights import random_model
    from models.registry import architecture, model_class

    for name in ["llava-onevision-qwen2-0.5b-ov-hf", *HUB_INDEXED]:
        assert model_class(architecture(shared_checkpoints / name)) is LlavaOnevisionForConditionalGeneration
    lm = our_tiny_ov.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    rand = random_model(LlavaOnevisionForConditionalGeneration, tiny_ov_dir, torch.float32, "cpu")
    assert rand.language_model.lm_head.weight is rand.language_model.model.embed_tokens.weight
