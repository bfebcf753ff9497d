"""The CPU stage: decode media, run the model's processor, render the prompt, tokenize. One row in,
one row out, always: a failure becomes the row's typed `error` and the row skips the GPU.

Untrusted media is decoded in a child process (pipeline/isolation.py): a decoder crash or hang becomes
`decode_crash` / `decode_timeout` for that row instead of a Ray task retried forever. Pixels leave as
uint8 (normalisation happens on the GPU). A prompt that cannot fit `max_model_len` together with
`max_new_tokens` is refused here (`too_long`), so its pixels never travel to the GPU stage. An image cell
may be a decoded uint8 array (`ray.data.read_images`): it reaches the codec as an array, not a list.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from models.errors import InputError
from pipeline.context_len import resolve_max_model_len
from pipeline.isolation import IsolatedWorker, WorkerCrashed, WorkerTimeout
from pipeline.job_config import JobConfig
from pipeline.kept import kept_columns
from pipeline.media_codec import codec_for, prepare_row
from pipeline.metrics import StageMetrics
from pipeline.model_cache import local_model_dir


class PreprocessStage:
    def __init__(self, config: JobConfig, decode_timeout_s: float = 60.0):
        # A checkpoint URL is copied to this node once (config/tokenizer/processor files only: no weights).
        config = dataclasses.replace(config, model=local_model_dir(config.model, weights=False))
        config = resolve_max_model_len(config)  # normally already resolved on the driver
        self.config = config
        self.codec = codec_for(config.model, config)
        self.worker = IsolatedWorker(prepare_row, init=(config.model, config))
        self.max_prompt = config.max_model_len - config.max_new_tokens
        self.timeout = decode_timeout_s
        self.metrics = StageMetrics("preprocess")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        n = len(batch["id"])
        out = kept_columns(batch)
        prompt_ids, packed, errors, n_prompt = [], [], [], []
        for i in range(n):
            row = {k: _cell(batch[k][i], k) for k in batch if not k.startswith("keep__")}
            try:
                ids, media_blob = self.worker.call(row, timeout=self.timeout)
                if len(ids) > self.max_prompt:
                    need = len(ids) + self.config.max_new_tokens
                    raise InputError(f"prompt ({len(ids)} tokens) + max_new_tokens ({self.config.max_new_tokens}) "
                                     f"= {need} exceeds --max-model-len {self.config.max_model_len}; re-run with "
                                     f"--max-model-len {need} or more", kind="too_long")
                prompt_ids.append(np.asarray(ids, dtype=np.int32))
                packed.append(media_blob)
                errors.append(None)
                n_prompt.append(len(ids))
            except (InputError, WorkerCrashed, WorkerTimeout) as exc:
                prompt_ids.append(np.zeros(0, dtype=np.int32))
                packed.append(None)
                errors.append(exc.row_error() if isinstance(exc, InputError) else f"{exc.kind}: {exc}")
                n_prompt.append(0)
        out["prompt_ids"] = _objects(prompt_ids)
        out["media"] = _objects(packed)
        out["error"] = np.array(errors, dtype=object)
        out["num_prompt_tokens"] = np.array(n_prompt, dtype=np.int32)
        self.metrics.record(rows=n, errors=sum(e is not None for e in errors), seconds=time.perf_counter() - t0)
        return out


def _objects(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def _cell(value, name: str = ""):
    if isinstance(value, np.ndarray):
        if name == "image" and value.dtype != object:
            return value  # a decoded image: as a nested list it would read as a list of images
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def media_summary(blob: bytes | None) -> str:
    return json.dumps({"bytes": len(blob) if blob else 0})
