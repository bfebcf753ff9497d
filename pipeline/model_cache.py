"""`--model s3://bucket/ckpt` (any fsspec URL): each node copies the checkpoint once into a local cache
directory, and everything downstream loads that directory exactly as a local checkpoint.

- The cache is `$VLMCAP_MODEL_CACHE` (default `~/.cache/vlmcap/models`), one directory per model URL.
- Concurrent callers on a node (the driver, CPU and GPU actors) serialise on an exclusive `flock` of the
  directory's lock file: the first one downloads, the others then find every file present and skip it.
- A file counts as present only when its size equals the remote size. Bytes arrive in `<name>.partial`,
  which is renamed into place once complete (a crash never leaves a short file under the real name), and
  a later call resumes a `.partial` from where it stopped instead of starting a 5 GB shard over.
- `weights=False` fetches everything but `*.safetensors` (what the driver and the CPU stage need: config,
  tokenizer, processor and template files); a GPU actor asks for the weights too.
Local paths (and `file://` URLs) are returned unchanged: nothing is copied.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
from pathlib import Path

import fsspec

from models.errors import CheckpointError

log = logging.getLogger(__name__)

CACHE_ENV = "VLMCAP_MODEL_CACHE"
WEIGHT_SUFFIX = ".safetensors"
CHUNK = 16 << 20


def is_remote(model: str) -> bool:
    return "://" in model and not model.startswith("file://")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vlmcap" / "models")


def cache_dir_for(model: str) -> Path:
    name = model.rstrip("/").rsplit("/", 1)[-1] or "model"
    return cache_root() / f"{name}-{hashlib.sha256(model.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remote_files(fs, root: str) -> dict[str, int]:
    """Relative path -> size of every file under the checkpoint URL."""
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    out = {}
    for path, info in found.items():
        if info.get("type", "file") == "file" and path.startswith(root + "/"):
            out[path[len(root) + 1:]] = int(info["size"])
    return out


def _download(fs, remote: str, target: Path, size: int) -> None:
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:  # not a prefix of this file (the remote changed): start over
        partial.unlink()
        have = 0
    with fs.open(remote, "rb") as src, open(partial, "ab") as dst:
        src.seek(have)
        while chunk := src.read(CHUNK):
            dst.write(chunk)
    got = partial.stat().st_size
    if got != size:
        raise CheckpointError(f"downloaded {got} bytes of {remote}, expected {size}; re-run to resume the copy")
    os.replace(partial, target)


def sync_checkpoint(model: str, dest: Path, weights: bool = True) -> list[str]:
    """Make `dest` hold the files of the checkpoint at URL `model`; returns the relative paths copied now."""
    fs, root = fsspec.core.url_to_fs(model)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    with _locked(dest / ".lock"):
        files = _remote_files(fs, root)
        if "config.json" not in files:
            raise CheckpointError(f"{model}: no config.json there ({len(files)} files found)")
        for rel, size in sorted(files.items()):
            if not weights and rel.endswith(WEIGHT_SUFFIX):
                continue
            target = dest / rel
            if target.is_file() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading %s (%.1f MB) to %s", posixpath.join(model, rel), size / 1e6, target)
            _download(fs, posixpath.join(root.rstrip("/"), rel), target, size)
            copied.append(rel)
    return copied


def local_model_dir(model: str, weights: bool = True) -> str:
    """A local directory holding the checkpoint `model` (a local path, or a URL copied into the cache)."""
    if not is_remote(model):
        return model.removeprefix("file://")
    dest = cache_dir_for(model)
    sync_checkpoint(model, dest, weights=weights)
    return str(dest)


def with_local_model(stage_cls: type) -> type:
    """`stage_cls` whose constructor gets the config with `model` pointing at this node's local copy (the
    output's `model` column and the fingerprint keep the URL: they are computed on the driver)."""
    import dataclasses

    class Stage(stage_cls):
        def __init__(self, config, *args, **kwargs):
            local = local_model_dir(config.model, weights=not getattr(config, "random_weights", False))
            super().__init__(dataclasses.replace(config, model=local), *args, **kwargs)

    Stage.__name__ = Stage.__qualname__ = stage_cls.__name__  # Ray Data names the operator after it
    return Stage
