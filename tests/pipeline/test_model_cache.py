"""pipeline/model_cache.py against a moto S3 server: `--model s3://...` is copied once per node.

- two processes asking for the same checkpoint at once copy each file exactly once, and the copy is
  byte-identical and loads (architecture, codec);
- `weights=False` leaves the safetensors behind; a later call with weights fetches only those;
- a `.partial` left by an interrupted copy is resumed (its bytes are kept, the rest appended), and a
  cached file of the wrong size is fetched again.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from pipeline.model_cache import CACHE_ENV, cache_dir_for, local_model_dir, sync_checkpoint


@pytest.fixture
def s3(moto_s3, monkeypatch, tmp_path):
    import s3fs

    for k, v in moto_s3.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached by an earlier test points at a dead server
    fs = s3fs.S3FileSystem()
    # moto keeps its state per process, across servers: each test gets a bucket of its own.
    fs.bucket = f"models-{uuid.uuid4().hex[:8]}"
    fs.mkdir(fs.bucket)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_concurrent_processes_download_once_and_the_copy_loads(tiny_ov_dir, s3):
    from models.registry import architecture
    from pipeline.job_config import JobConfig
    from pipeline.media_codec import codec_for

    s3.put(str(tiny_ov_dir), f"{s3.bucket}/ov", recursive=True)
    url = f"s3://{s3.bucket}/ov"
    dest = cache_dir_for(url)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        copied = list(pool.map(sync_checkpoint, [url, url], [dest, dest]))
    original = files_of(tiny_ov_dir)
    assert sorted(copied[0] + copied[1]) == sorted(original)  # every file once, by one of the two
    cached = {k: v for k, v in files_of(dest).items() if k != ".lock"}
    assert cached == original
    assert local_model_dir(url) == str(dest) and sync_checkpoint(url, dest) == []  # nothing fetched again
    assert architecture(dest) == "LlavaOnevisionForConditionalGeneration"
    codec_for(str(dest), JobConfig(model=str(dest), input="-", output="-"))


def test_metadata_first_then_weights_resume_and_size_check(tiny_mllama_dir, s3):
    s3.put(str(tiny_mllama_dir), f"{s3.bucket}/mllama", recursive=True)
    url = f"s3://{s3.bucket}/mllama"
    dest = Path(local_model_dir(url, weights=False))
    assert (dest / "config.json").is_file() and not list(dest.glob("*.safetensors"))

    weights = sorted(p.name for p in tiny_mllama_dir.glob("*.safetensors"))
    first = tiny_mllama_dir / weights[0]
    data = first.read_bytes()
    # An interrupted copy: a marked prefix of the right length. Resuming keeps it (sizes are verified, not
    # contents), so the marker proves the copy continued instead of starting over.
    (dest / (first.name + ".partial")).write_bytes(b"\xaa" * 1000)
    (dest / "config.json").write_text("{}")  # a cached file whose size no longer matches
    copied = sync_checkpoint(url, dest)
    assert sorted(copied) == sorted([*weights, "config.json"])
    resumed = (dest / first.name).read_bytes()
    assert resumed[:1000] == b"\xaa" * 1000 and resumed[1000:] == data[1000:]
    assert (dest / "config.json").read_bytes() == (tiny_mllama_dir / "config.json").read_bytes()
    assert not list(dest.glob("*.partial"))


def test_missing_checkpoint_url_is_a_clear_error(s3):
    from models.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no config.json"):
        local_model_dir(f"s3://{s3.bucket}/nothing-here")
