"""models/loader.py: sharded == single file, strict name/shape checks, pickle-only dirs refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.errors import CheckpointError
from models.loader import checkpoint_files
from models.mllama.model import MllamaForConditionalGeneration


def read_all(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def shard(src, dest, parts: int = 3):
    shutil.copytree(src, dest)
    (dest / "model.safetensors").unlink()
    tensors = read_all(src / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i in range(parts):
        fname = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = names[i::parts]
        save_file({n: tensors[n].contiguous() for n in chunk}, dest / fname)
        weight_map.update({n: fname for n in chunk})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


def test_three_shards_load_identically(tiny_mllama_dir, our_tiny_mllama, tmp_path):
    sharded = shard(tiny_mllama_dir, tmp_path / "sharded")
    assert len(set(checkpoint_files(sharded).values())) == 3
    model = MllamaForConditionalGeneration.from_pretrained(sharded, dtype=torch.float32)
    ref = our_tiny_mllama.state_dict()
    got = model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_dtype_is_the_callers(tiny_mllama_dir):
    model = MllamaForConditionalGeneration.from_pretrained(tiny_mllama_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # rope tables stay fp32 whatever the weights' dtype
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32


def rewrite(src, dest, edit):
    shutil.copytree(src, dest)
    tensors = read_all(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dest / "model.safetensors")
    return dest


def test_missing_tensor_is_named(tiny_mllama_dir, tmp_path):
    d = rewrite(tiny_mllama_dir, tmp_path / "m", lambda t: t.pop("language_model.model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing: language_model\.model\.norm\.weight"):
        MllamaForConditionalGeneration.from_pretrained(d, dtype=torch.float32)


def test_unexpected_and_misshaped_tensors_are_named(tiny_mllama_dir, tmp_path):
    def edit(t):
        t["vision_model.extra.weight"] = torch.zeros(2)
        t["multi_modal_projector.bias"] = torch.zeros(3)

    d = rewrite(tiny_mllama_dir, tmp_path / "u", edit)
    with pytest.raises(CheckpointError) as err:
        MllamaForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
    assert "1 unexpected: vision_model.extra.weight" in str(err.value)
    assert "multi_modal_projector.bias: checkpoint [3] vs model [64]" in str(err.value)


def test_pickle_only_dir_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        checkpoint_files(tmp_path)
