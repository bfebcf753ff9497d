"""Tiny LLaVA-OneVision checkpoint written by transformers' own `save_pretrained`, with the real tokenizer.

Shapes are shrunk but every code path of the real model stays live:
- the real Qwen2 vocabulary (the 0.5B config's 152,000 embedding rows), tokenizer, chat template and the
  real `<image>` / `<video>` ids (151646 / 151647);
- SigLIP crops of 42 px with 6 px patches: 7x7 features per crop (odd, like 27x27 at 384/14), so video
  pooling goes 7 -> 4 as 27 -> 14 does; the grid pinpoints are the real ones scaled by 42/384 (1x1 .. 6x6
  crops), so the anyres_max_9 downscale triggers exactly where it does at full size;
- tied word embeddings, as the 0.5B checkpoint; a non-zero `image_newline` (random init).
The processor files written next to the weights describe the same geometry, so transformers' processor
produces pixel values and token counts for this checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

# Same lookup as tests/conftest.py (the device machine names a carried copy of ../shared/checkpoints).
SHARED = Path(os.environ.get("VLMCAP_SHARED_CHECKPOINTS",
                             Path(__file__).resolve().parents[3].parent / "shared" / "checkpoints"))
OV_REAL = SHARED / "llava-onevision-qwen2-0.5b-ov-hf"

TINY_OV_IMAGE = 42
TINY_OV_PATCH = 6
OV_META_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.json", "merges.txt", "chat_template.json", "generation_config.json")


def tiny_ov_pinpoints() -> list[list[int]]:
    real = json.loads((OV_REAL / "config.json").read_text())["image_grid_pinpoints"]
    return [[h // 384 * TINY_OV_IMAGE, w // 384 * TINY_OV_IMAGE] for h, w in real]


def tiny_ov_config():
    from transformers import LlavaOnevisionConfig

    real = json.loads((OV_REAL / "config.json").read_text())
    text = dict(real["text_config"], hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_window_layers=2)
    vision = dict(real["vision_config"], hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, image_size=TINY_OV_IMAGE, patch_size=TINY_OV_PATCH)
    return LlavaOnevisionConfig(**dict(real, text_config=text, vision_config=vision,
                                       image_grid_pinpoints=tiny_ov_pinpoints()))


def write_tiny_ov(dest: Path, seed: int = 0) -> Path:
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(tiny_ov_config()).eval()
    with torch.no_grad():  # make biases non-trivial so a dropped bias cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    model.save_pretrained(dest)
    for name in OV_META_FILES:
        shutil.copy(OV_REAL / name, dest / name)
    side = TINY_OV_IMAGE // TINY_OV_PATCH
    proc = json.loads((OV_REAL / "processor_config.json").read_text())
    (dest / "processor_config.json").write_text(json.dumps(dict(proc, num_image_tokens=side * side), indent=2))
    pre = json.loads((OV_REAL / "preprocessor_config.json").read_text())
    size = {"height": TINY_OV_IMAGE, "width": TINY_OV_IMAGE}
    pre.update(size=size, image_grid_pinpoints=tiny_ov_pinpoints())
    (dest / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (dest / "video_processor").mkdir(exist_ok=True)
    for f in (OV_REAL / "video_processor").iterdir():
        cfg = json.loads(f.read_text())
        (dest / "video_processor" / f.name).write_text(json.dumps(dict(cfg, size=size), indent=2))
    return dest


@pytest.fixture(scope="session")
def tiny_ov_dir(tmp_path_factory) -> Path:
    return write_tiny_ov(tmp_path_factory.mktemp("tiny_ov"))


@pytest.fixture(scope="session")
def hf_tiny_ov(tiny_ov_dir):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_ov_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_ov_processor(tiny_ov_dir):
    from transformers import LlavaOnevisionProcessor

    return LlavaOnevisionProcessor.from_pretrained(tiny_ov_dir)


@pytest.fixture(scope="session")
def our_tiny_ov(tiny_ov_dir):
    from models.onevision.model import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_ov_dir, dtype=torch.float32)
