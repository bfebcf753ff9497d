"""Fixtures of the demo tests: the bundled model's metadata (no weights) in a tmp dir."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """demo/model's config, tokenizer, chat template and processors (what ExampleMaker reads)."""
    d = tmp_path_factory.mktemp("demo_meta")
    for f in ("config.json", "tokenizer.json", "chat_template.json", "preprocessor_config.json"):
        shutil.copyfile(f"demo/model/{f}", d / f)
    shutil.copytree("demo/model/video_processor", d / "video_processor")
    return d
