"""Lazy model registry keyed by `config.json`'s `architectures[0]` (imports happen on lookup)."""

from __future__ import annotations

import importlib
from pathlib import Path

from models.config_utils import read_config
from models.errors import CheckpointError

ARCHITECTURES = {
    "MllamaForConditionalGeneration": "models.mllama.model:MllamaForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": "models.onevision.model:LlavaOnevisionForConditionalGeneration",
}


def architecture(ckpt_dir: str | Path) -> str:
    archs = read_config(ckpt_dir).get("architectures") or []
    if not archs or archs[0] not in ARCHITECTURES:
        raise CheckpointError(f"{ckpt_dir}: unsupported architectures {archs}; supported: {sorted(ARCHITECTURES)}")
    return archs[0]


def model_class(arch: str) -> type:
    module, _, name = ARCHITECTURES[arch].partition(":")
    return getattr(importlib.import_module(module), name)
