"""scripts/write_random_checkpoint.py: a sharded checkpoint in the hub layout that our loader reads back
exactly, with the metadata files of the source directory copied beside it."""

from __future__ import annotations

import json

import torch

from models.mllama.model import MllamaForConditionalGeneration
from models.random_weights import random_model
from tests.conftest import load_script


def test_written_checkpoint_loads_back_exactly(tiny_mllama_dir, tmp_path):
    out = tmp_path / "ckpt"
    load_script("write_random_checkpoint").main(["--config", str(tiny_mllama_dir), "--out", str(out), "--device", "cpu",
                        "--dtype", "float32", "--shard-gib", "0.02", "--seed", "3"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    assert {p.name for p in tiny_mllama_dir.iterdir()} - {"model.safetensors"} <= {p.name for p in out.iterdir()}
    loaded = MllamaForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    want = random_model(MllamaForConditionalGeneration, tiny_mllama_dir, torch.float32, "cpu", seed=3)
    got = dict(loaded.named_parameters())
    for name, p in want.named_parameters():
        assert torch.equal(got[name], p), name
