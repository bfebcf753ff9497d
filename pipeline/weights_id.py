"""Which weights a local checkpoint holds, cheaply: the job's fingerprint names the model by its path, so new
weights at the same path (a retrained demo/model, a re-downloaded fine-tune) would resume into output written
by the old ones. The sink records this identity beside the fingerprint and refuses a resume where it changed.

    weights_identity("demo/model")  -> "3f9c..." (16 hex digits), or None (remote, random or no safetensors)

Per `*.safetensors` file: its name, size, header (tensor names, shapes, offsets) and 16 evenly spaced 64 KiB
samples of the data, hashed together: ~1 MiB read per file (a 90B checkpoint's 37 shards: ~40 MB), where a
full hash would read every byte. Two trainings of one architecture differ in every sampled block; a change
confined to unsampled bytes goes unseen, which is the price of not reading 180 GB. Runs on the driver.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from pipeline.model_cache import is_remote

SAMPLES = 16
SAMPLE_BYTES = 64 << 10


def weights_identity(model: str, random_weights: bool = False) -> str | None:
    """The identity of `model`'s safetensors (None where there is nothing local to read)."""
    if random_weights or is_remote(model):
        return None  # random: the fingerprint says so; remote: the driver has no copy to read
    files = sorted(Path(model.removeprefix("file://")).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            head = fh.read(8)
            digest.update(head)
            if len(head) == 8:
                digest.update(fh.read(min(struct.unpack("<Q", head)[0], 100 << 20)))  # the JSON header
            for i in range(SAMPLES):
                fh.seek(max(0, (size - SAMPLE_BYTES) * i // max(1, SAMPLES - 1)))
                digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]
