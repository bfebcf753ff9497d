"""Fixtures shared by the model tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import models.loader as loader
from ops.parallel import ParallelContext
from tests.conftest import load_script


class CountingOpen:
    """safe_open stand-in counting the bytes each tensor name yields (full reads and slices)."""

    def __init__(self, counts: Counter, full_reads: set):
        self.counts, self.full_reads = counts, full_reads

    def __call__(self, path, framework, device="cpu"):
        outer = self

        class File:
            def __enter__(self):
                self.f = safe_open(path, framework=framework, device=device).__enter__()
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, name):
                t = self.f.get_tensor(name)
                outer.counts[name] += t.nbytes
                outer.full_reads.add(name)
                return t

            def get_slice(self, name):
                inner = self.f.get_slice(name)

                class Slice:
                    def get_shape(self):
                        return inner.get_shape()

                    def __getitem__(self, idx):
                        t = inner[idx]
                        outer.counts[name] += t.nbytes
                        return t

                return Slice()

        return File()


@pytest.fixture
def shard_reads(monkeypatch):
    """`load(model_class, ckpt, ctx) -> (bytes read per tensor name, names read whole)` for one rank's
    `from_pretrained` of `ckpt` (fp32): what each rank actually pulls out of the safetensors files."""

    def load(model_class, ckpt: Path, ctx: ParallelContext) -> tuple[Counter, set]:
        counts, full = Counter(), set()
        with monkeypatch.context() as patch:
            patch.setattr(loader, "safe_open", CountingOpen(counts, full))
            model_class.from_pretrained(ckpt, dtype=torch.float32, tp=ctx)  # builds on meta, then loads
        return counts, full

    return load


@pytest.fixture(scope="session")
def tp_plan():
    return load_script("tp_plan")
