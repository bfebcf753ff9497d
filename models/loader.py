"""Load Hugging Face safetensors checkpoints into our modules.

Contract:
- Only safetensors are read (`model.safetensors`, or shards listed by `model.safetensors.index.json`); a
  directory holding only pickle formats (`.bin`, `.pt`, `.pth`) is refused with `CheckpointError`.
- Our module attribute names mirror the hub's tensor names, so a parameter's qualified name *is* its
  tensor name. A model may declare `tied_weights = {"lm_head.weight": "embed.weight"}` (target: source);
  tied targets are not read and end up sharing the source's storage.
- Before any data is read, names and shapes from the safetensors headers are checked against the model:
  one `CheckpointError` lists every missing, unexpected and mis-shaped tensor.
- Weights are streamed: the model is materialised once with `to_empty` on the target device in the
  target dtype, and each tensor is copied in as it is read, so host memory never holds the checkpoint twice.
- A parameter may carry `param.weight_loader(param, slice_)` to read only part of a tensor (tensor
  parallelism); `slice_` is the safetensors lazy slice, so unread bytes never leave the file.
  The module owning a parameter may instead define `load_shard(leaf, param, slice_)` and
  `full_shape(leaf)` (ops/parallel.py): module hooks survive `to_empty`, which replaces parameter objects.
- Afterwards `finalize` rebuilds non-persistent buffers (modules defining `reset_buffers()`, e.g. rope
  tables, kept in fp32) and lets modules defining `fuse_weights()` fuse their projections.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from models.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def checkpoint_files(ckpt_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / INDEX_FILE).exists():
        weight_map = json.loads((ckpt_dir / INDEX_FILE).read_text())["weight_map"]
        return {name: ckpt_dir / fname for name, fname in weight_map.items()}
    if (ckpt_dir / SINGLE_FILE).exists():
        with safe_open(ckpt_dir / SINGLE_FILE, framework="pt") as f:
            return {name: ckpt_dir / SINGLE_FILE for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    pickles = sorted(p.name for p in ckpt_dir.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{ckpt_dir} holds only pickle weights ({', '.join(pickles[:3])}); only safetensors are loaded, "
            "convert the checkpoint to safetensors first"
        )
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {ckpt_dir}")


def expected_tensors(model: nn.Module) -> dict[str, torch.Size]:
    """Tensor names (and full shapes) the checkpoint must provide for `model`."""
    tied = set(getattr(model, "tied_weights", {}))
    full_shape = getattr(model, "checkpoint_shape", None)
    out = {}
    for name, p in model.named_parameters():
        if name not in tied:
            owner, leaf = _owner(model, name)
            if full_shape:
                out[name] = torch.Size(full_shape(name, p))
            elif hasattr(owner, "full_shape"):
                out[name] = torch.Size(owner.full_shape(leaf))
            else:
                out[name] = p.shape
    return out


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module, _, leaf = name.rpartition(".")
    return model.get_submodule(module), leaf


def _header_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    by_file = defaultdict(list)
    for name, path in files.items():
        by_file[path].append(name)
    shapes = {}
    for path, names in by_file.items():
        if not path.exists():
            raise CheckpointError(f"checkpoint shard {path.name} listed in the index is missing")
        with safe_open(path, framework="pt") as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"index says {name} is in {path.name}, but it is not")
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def check_names_and_shapes(model: nn.Module, files: dict[str, Path]) -> None:
    expected = expected_tensors(model)
    shapes = _header_shapes(files)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    misshaped = sorted(
        f"{n}: checkpoint {list(shapes[n])} vs model {list(expected[n])}"
        for n in set(expected) & set(shapes) if tuple(expected[n]) != shapes[n]
    )
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:10]) + (f" ... (+{len(items) - 10} more)" if len(items) > 10 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))


def load_checkpoint(model: nn.Module, ckpt_dir: str | Path, *, dtype: torch.dtype,
                    device: torch.device | str = "cpu") -> nn.Module:
    """Materialise `model` (built on any device, typically meta) on `device` in `dtype` and fill it."""
    files = checkpoint_files(ckpt_dir)
    check_names_and_shapes(model, files)
    model.to_empty(device=device)
    model.to(dtype)
    params = dict(model.named_parameters())
    by_file = defaultdict(list)
    for name in expected_tensors(model):
        by_file[files[name]].append(name)
    with torch.no_grad():
        for path in sorted(by_file):
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in by_file[path]:
                    param = params[name]
                    loader = getattr(param, "weight_loader", None)
                    owner, leaf = _owner(model, name)
                    if loader is not None:
                        loader(param, f.get_slice(name))
                    elif hasattr(owner, "load_shard"):
                        owner.load_shard(leaf, param, f.get_slice(name))
                    else:
                        param.copy_(f.get_tensor(name))
    tie_weights(model)
    return finalize(model)


def finalize(model: nn.Module) -> nn.Module:
    """After weights are in place: rebuild non-persistent buffers, fuse projections (see ops/fusion.py)."""
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    for module in list(model.modules()):
        if hasattr(module, "fuse_weights"):
            module.fuse_weights()
    return model


def tie_weights(model: nn.Module) -> None:
    for target, source in getattr(model, "tied_weights", {}).items():
        t_mod, _, t_attr = target.rpartition(".")
        setattr(model.get_submodule(t_mod), t_attr, model.get_parameter(source))
