"""The frozen job configuration: CLI flags and/or a YAML file -> `JobConfig`, consumed read-only.

`fingerprint()` hashes what decides the output text (model, prompt, sampling, media settings); it is
stored beside the output so a resume with a different configuration is refused unless `overwrite`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class JobConfig:
    model: str
    input: str
    output: str
    prompt: str | None = "Describe this image in detail."
    prompt_column: str | None = None
    messages_column: str | None = None
    image_column: str | None = "image"
    video_column: str | None = "video"
    id_column: str = "id"
    keep_columns: tuple[str, ...] = ()
    output_format: str = "parquet"  # parquet | jsonl
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    num_frames: int | None = None
    tp: int = 1
    replicas: int = 1
    batch_size: int = 64  # rows per Ray batch into the GPU stage
    # Ray batches each GPU actor works on at once. Batches finish whole, so with fewer than ~2x the engine's
    # slots in flight its slots empty between waves (Mllama-11B: 172 slots; 256 in flight ran at 88%).
    batches_in_flight: int = 8
    preprocess_actors: tuple[int, int] = (1, 8)  # autoscaling range of the CPU stage
    # None: derived from the model's processor (pipeline/context_len.py) before any stage starts.
    max_model_len: int | None = None
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.9
    cuda_graphs: bool = True
    dtype: str = "bfloat16"
    allow_http: bool = False
    overwrite: bool = False
    rows_per_file: int = 10000
    progress_interval_s: float = 5.0
    engine_report_s: float = 60.0  # each GPU actor's busy/idle line
    stall_timeout_s: float = 1800.0  # fail the job when no output row arrives for this long (0: never)
    limit: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    random_weights: bool = False  # benchmarks / dry runs: random weights at the config's shapes, no checkpoint read
    max_prefill_requests: int = 32
    max_decode_stall_ms: float | None = None  # see EngineConfig: bounds prefill stalls of running sequences
    stage_vision_images: int = 0  # see EngineConfig: vision encoded a few images per step (pipeline/engine/staging.py)
    # jobs/caption.py --gallery N: <output>/_gallery.html with N sampled rows once the job is done. A view of
    # the output, not of how it was made: deliberately not in FINGERPRINT_KEYS, so it never blocks a resume.
    gallery: int = 0
    # tests only: {"gpu_exit_on_batch": k, "marker": path} kills a GPU actor once on its k-th batch;
    # {"decode_exit_on_id": id} kills the decoding child process on that row, every time;
    # {"gpu_init_exit": true} kills every GPU actor while it is being constructed;
    # {"tp_rank_kill_on_batch": k, "marker": path} SIGKILLs a GPU actor's last tensor-parallel rank once.
    # {"generate_delay_s": s} makes every GPU-stage batch wait s seconds first.
    fault_injection: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.output_format not in ("parquet", "jsonl"):
            raise ValueError("output_format must be parquet or jsonl")
        given = [x for x in (self.prompt_column, self.messages_column) if x]
        if len(given) > 1:
            raise ValueError("use at most one of prompt_column / messages_column")
        if self.tp < 1 or self.replicas < 1:
            raise ValueError("tp and replicas must be >= 1")
        if self.gallery < 0:
            raise ValueError("gallery must be >= 0 (rows shown in _gallery.html)")

    # What decides the output text. (--output-format is checked by the sink from the part files' suffixes.)
    FINGERPRINT_KEYS: ClassVar[tuple[str, ...]] = (
        "model", "prompt", "prompt_column", "messages_column", "image_column", "video_column", "max_new_tokens",
        "temperature", "top_p", "top_k", "seed", "stop", "num_frames", "dtype", "random_weights", "ignore_eos")

    def fingerprint(self) -> str:
        blob = json.dumps({k: getattr(self, k) for k in self.FINGERPRINT_KEYS}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> JobConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)} (use the flag names of --help)")
        d = dict(d)
        for k in ("keep_columns", "stop", "preprocess_actors"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, aliases: dict[str, str] | None = None, **overrides) -> JobConfig:
        data = read_yaml(path, aliases)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def read_yaml(path: str | Path, aliases: dict[str, str] | None = None) -> dict:
    """A YAML job file -> config keys. Keys may be spelled as the CLI flags (`max-new-tokens`,
    `--max-new-tokens`, `progress-interval`) or as the fields (`max_new_tokens`); `aliases` maps flag names
    whose field differs (`progress-interval` -> `progress_interval_s`). Unreadable files, YAML errors and
    non-mapping documents raise `ValueError` with one line saying which."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"--config {path} is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must be a mapping of option: value, got a {type(data).__name__}")
    aliases = aliases or {}
    out = {}
    for key, value in data.items():
        name = str(key).lstrip("-")
        out[aliases.get(name, aliases.get(name.replace("_", "-"), name.replace("-", "_")))] = value
    return out
