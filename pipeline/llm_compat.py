"""`ray.data.llm`-shaped entry point: switch by changing one import.

    from pipeline.llm_compat import vLLMEngineProcessorConfig, build_processor   # was: from ray.data.llm import ...

Contract:
- `vLLMEngineProcessorConfig(model_source=..., batch_size=32, concurrency=1, max_concurrent_batches=8,
  engine_kwargs={...})` with Ray's names. `engine_kwargs` maps `tensor_parallel_size` -> `tp`,
  `max_model_len`, `max_num_seqs`, `gpu_memory_utilization`, `dtype` ("auto" = bfloat16 on GPUs),
  `enforce_eager` (no CUDA graphs); vLLM scheduling knobs that do not change the text
  (`enable_chunked_prefill`, `max_num_batched_tokens`, `enable_prefix_caching`, ...) are accepted and
  ignored; `trust_remote_code=True` is refused (checkpoint code is never run); anything else is a
  `ValueError` naming the accepted keys. `concurrency=n` (or `(m, n)`) is a fixed
  pool of n replicas. Ray's stage flags (`has_image`, `apply_chat_template`, `tokenize`, `detokenize`,
  `*_stage`, `accelerator_type`, `runtime_env`, ...) are accepted and ignored: our CPU stage always renders
  the checkpoint's own chat template and tokenizes. Our own extras: `max_tokens` (for rows whose
  `sampling_params` omit it, and the budget a derived `max_model_len` reserves), `allow_http` (on by default
  here, as vLLM fetches http image URLs; public addresses only, bounded: pipeline/fetch.py) and
  `job_overrides` (any other `JobConfig` field, e.g. `{"num_frames": 8}`).
- `build_processor(config, preprocess=None, postprocess=None)` (alias `build_llm_processor`) returns a
  callable `Dataset -> Dataset`. `preprocess(row)` (a function) must return a row with `messages`
  (OpenAI chat format: string content, or parts `text`, `image_url` with a `data:` base64 URL, an http(s)
  URL, a path or `s3://` URI, `image` holding a PIL image / encoded bytes / uint8 array / URL, `video_url`)
  and optionally `sampling_params` (`max_tokens` or `max_completion_tokens`, `temperature`, `top_p`,
  `top_k` (<= 0 = off), `seed`, `stop`, `stop_token_ids`, `ignore_eos`; `detokenize`/`skip_special_tokens`
  ignored; `n` > 1, penalties, `min_p`, logprobs are refused with a `ValueError`). Sampling may differ per row.
  Unlike vLLM, a row without `temperature` is greedy (0), the batch job's default.
- Output rows: the preprocess row's other columns, then ours (`id`, `text`, `finish_reason`, `error`,
  `num_prompt_tokens`, `num_generated_tokens`, `model`) and Ray's `generated_text`, `num_input_tokens`,
  `num_generated_tokens`; then `postprocess(row)` is applied. Rows never raise: a bad row (undecodable image,
  prompt too long...) has `error` set, `finish_reason` "error" and `generated_text` "" (Ray's
  `should_continue_on_error=True` behaviour, whatever that flag says) and still reaches `postprocess`.
  A row with no image or video is such an error row (`missing_media`): the batch path is for media.
- No resume here (ids are random per run): for resumable jobs use `CaptionProcessor` or `jobs/caption.py`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from ops.sampling import SamplingParams
from pipeline.builder import CaptionProcessor, _gpu_available, apply_generate_stage
from pipeline.generate_stage import GenerateStage
from pipeline.job_config import JobConfig
from pipeline.model_cache import with_local_model

log = logging.getLogger(__name__)

# engine_kwargs we honour -> JobConfig field; and vLLM knobs that only change scheduling, not the text.
_ENGINE_KEYS = {"tensor_parallel_size": "tp", "max_model_len": "max_model_len", "max_num_seqs": "max_num_seqs",
                "gpu_memory_utilization": "gpu_memory_utilization", "dtype": "dtype", "enforce_eager": "cuda_graphs"}
_IGNORED_ENGINE_KEYS = {"enable_chunked_prefill", "max_num_batched_tokens", "enable_prefix_caching",
                        "limit_mm_per_prompt", "distributed_executor_backend",
                        "disable_log_stats", "swap_space", "block_size", "pipeline_parallel_size", "seed",
                        "max_logprobs", "mm_processor_kwargs", "guided_decoding_backend"}
_SAMPLING_IGNORED = {"detokenize", "skip_special_tokens"}
# Accepted only at their neutral value: anything else would change the text in a way we do not implement.
_SAMPLING_NEUTRAL = {"n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                     "min_p": 0.0, "logprobs": None, "prompt_logprobs": None, "min_tokens": 0}
_SAMPLING_KEY = "keep____vlmcap_sampling"  # rides through both stages as a kept column; dropped at the end


@dataclass(kw_only=True)
class vLLMEngineProcessorConfig:  # noqa: N801 - the name `ray.data.llm` users already import
    model_source: str
    batch_size: int = 32
    concurrency: int | tuple[int, int] = 1
    max_concurrent_batches: int = 8
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Ray's own fields, accepted so that only the import changes; see the module docstring.
    accelerator_type: str | None = None
    runtime_env: dict | None = None
    has_image: bool = False
    apply_chat_template: bool = True
    tokenize: bool = True
    detokenize: bool = True
    chat_template_stage: Any = True
    tokenize_stage: Any = True
    detokenize_stage: Any = True
    prepare_image_stage: Any = False
    prepare_multimodal_stage: Any = False
    should_continue_on_error: bool = False
    max_pending_requests: int | None = None
    task_type: str = "generate"
    # ours
    max_tokens: int = 256
    allow_http: bool = True
    job_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task_type != "generate":
            raise ValueError(f"task_type {self.task_type!r}: only 'generate' is supported")
        unknown = set(self.engine_kwargs) - set(_ENGINE_KEYS) - _IGNORED_ENGINE_KEYS - {"trust_remote_code"}
        if unknown:
            raise ValueError(f"unsupported engine_kwargs {sorted(unknown)}; accepted: {sorted(_ENGINE_KEYS)}, "
                             f"ignored: {sorted(_IGNORED_ENGINE_KEYS)}")
        if self.engine_kwargs.get("trust_remote_code"):
            raise ValueError("trust_remote_code: code from a checkpoint is never executed here; the supported "
                             "architectures run on this project's own implementations (leave it unset or False)")
        if self.engine_kwargs.get("pipeline_parallel_size", 1) != 1:
            raise ValueError("pipeline_parallel_size must be 1 (use tensor_parallel_size)")

    def job_config(self) -> JobConfig:
        """The equivalent `JobConfig` of our pipeline (messages from the `messages` column)."""
        conc = self.concurrency
        replicas = conc[1] if isinstance(conc, tuple | list) else conc
        kw: dict[str, Any] = {}
        for key, value in self.engine_kwargs.items():
            if key == "enforce_eager":
                kw["cuda_graphs"] = not value
            elif key == "dtype":
                if value != "auto":
                    kw["dtype"] = value
            elif key in _ENGINE_KEYS:
                kw[_ENGINE_KEYS[key]] = value
        return JobConfig.from_dict({
            "model": self.model_source, "input": "-", "output": "-", "prompt": None, "messages_column": "messages",
            "batch_size": self.batch_size, "replicas": int(replicas), "batches_in_flight": self.max_concurrent_batches,
            "max_new_tokens": self.max_tokens, "allow_http": self.allow_http, **kw, **self.job_overrides})


def sampling_from_dict(params: dict | None, default_max_tokens: int) -> SamplingParams:
    """vLLM-style `sampling_params` -> our `SamplingParams`; unsupported settings raise `ValueError`."""
    params = dict(params or {})
    for key in _SAMPLING_IGNORED:
        params.pop(key, None)
    for key, neutral in _SAMPLING_NEUTRAL.items():
        if key in params and params.pop(key) not in (neutral, None):
            raise ValueError(f"sampling_params {key!r} is not supported (only {neutral!r})")
    max_tokens = params.pop("max_tokens", None) or params.pop("max_completion_tokens", None) or default_max_tokens
    params.pop("max_completion_tokens", None)
    stop = params.pop("stop", None) or ()
    stop_ids = params.pop("stop_token_ids", None)
    top_k = params.pop("top_k", None)
    out = SamplingParams(
        max_new_tokens=int(max_tokens),
        temperature=float(_or(params.pop("temperature", None), 0.0)),
        top_p=float(_or(params.pop("top_p", None), 1.0)),
        top_k=max(int(top_k), 0) if top_k is not None else 0,  # vLLM spells "off" as -1 (older) or 0
        seed=params.pop("seed", None),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        stop_token_ids=tuple(int(t) for t in stop_ids) if stop_ids else None,
        ignore_eos=bool(params.pop("ignore_eos", False)))
    if params:
        raise ValueError(f"unsupported sampling_params {sorted(params)}")
    return out


def _or(value, default):
    return default if value is None else value


def _image_cell(value: Any) -> bytes | str | np.ndarray:
    """One image part's payload -> a media cell our codecs read (bytes, a URL/path, or a uint8 array)."""
    if isinstance(value, bytes | bytearray | memoryview | np.ndarray):
        return bytes(value) if not isinstance(value, np.ndarray) else value
    if isinstance(value, dict):  # {"url": ...} (image_url parts) or Hugging Face's {"bytes": ..., "path": ...}
        return _image_cell(value.get("url") or value.get("bytes") or value.get("path"))
    if isinstance(value, str):
        return _data_url(value) if value.startswith("data:") else value
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image: PNG keeps its pixels exactly
        buf = io.BytesIO()
        image = value if value.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else value.convert("RGB")
        image.save(buf, "PNG")
        return buf.getvalue()
    raise ValueError(f"an image part holds a {type(value).__name__}; expected a PIL image, bytes, a uint8 "
                     "array, or a data:/http(s)/path URL")


def _data_url(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ValueError(f"only base64 data: URLs are supported, got {head[:40]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"a data: URL is not valid base64 ({exc})") from None


def caption_row(row: dict, default_max_tokens: int) -> dict:
    """A preprocessed `ray.data.llm` row -> a row of our pipeline: `id`, `image` (list) / `video` cells in the
    order of their placeholders, template `messages` (JSON, media as placeholders), the row's sampling
    params (validated here, so a bad setting fails at once) and every other column as `keep__<name>`."""
    if "messages" not in row:
        raise ValueError(f"rows need a 'messages' column (OpenAI chat format); got {sorted(row)}")
    images: list = []
    videos: list = []
    messages = []
    for message in row["messages"]:
        content = message.get("content")
        if isinstance(content, list | tuple | np.ndarray):
            parts = []
            for part in content:
                kind = part.get("type")
                if kind in ("image_url", "image", "image_pil"):
                    images.append(_image_cell(part.get(kind) if kind != "image_pil" else part.get("image_pil")))
                    parts.append({"type": "image"})
                elif kind == "video_url":
                    videos.append(_image_cell(part.get("video_url")))
                    parts.append({"type": "video"})
                else:
                    parts.append({k: v for k, v in part.items() if v is not None})
            content = parts
        messages.append({**{k: v for k, v in message.items() if v is not None}, "content": content})
    sampling = row.get("sampling_params")
    sampling_from_dict(sampling, default_max_tokens)  # refuse unsupported settings now, on the CPU side
    out = {f"keep__{k}": v for k, v in row.items() if k != "messages"}
    out.update(id=uuid.uuid4().hex, messages=json.dumps(messages), image=images or None,
               video=videos[0] if len(videos) == 1 else videos or None)
    out[_SAMPLING_KEY] = json.dumps(sampling or {})
    return out


class _PerRowSampling:
    """The replica's engine thread, with each request's sampling params replaced by its row's. (The GPU
    stage builds every request with the job's one setting; this keeps its batching and error handling.)"""

    def __init__(self, inner, default_max_tokens: int):
        self.inner, self.default_max_tokens = inner, default_max_tokens
        self.params: dict[str, SamplingParams] = {}

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def expect(self, ids, sampling_json) -> None:
        for i, s in zip(ids, sampling_json, strict=True):
            self.params[str(i)] = sampling_from_dict(json.loads(s), self.default_max_tokens)

    def submit(self, request):
        request.sampling = self.params.pop(request.request_id, request.sampling)
        return self.inner.submit(request)


class _RowSamplingStage(GenerateStage):
    def __init__(self, config: JobConfig):
        super().__init__(config)
        self.engine = _PerRowSampling(self.engine, config.max_new_tokens)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = [i for i in range(len(batch["id"])) if not isinstance(batch["error"][i], str)]
        self.engine.expect(batch["id"][ok], batch[_SAMPLING_KEY][ok])
        return super().__call__(batch)


def _finish(batch: dict[str, np.ndarray], model_name: str) -> dict[str, np.ndarray]:
    """GPU-stage rows -> the user's columns, ours, and Ray's names for the generation results."""
    n = len(batch["id"])
    text = np.array([t if isinstance(t, str) else None for t in batch["text"]], dtype=object)
    out = {
        "id": batch["id"], "text": text, "finish_reason": batch["finish_reason"],
        "error": np.array([e if isinstance(e, str) else None for e in batch["error"]], dtype=object),
        "num_prompt_tokens": batch["num_prompt_tokens"], "num_generated_tokens": batch["num_generated_tokens"],
        "model": np.array([model_name] * n, dtype=object),
    }
    # The user's columns win over ours (a row's own `id` stays its id); Ray's result columns win over both.
    out.update({k[len("keep__"):]: v for k, v in batch.items() if k.startswith("keep__") and k != _SAMPLING_KEY})
    out["generated_text"] = np.array([t or "" for t in text], dtype=object)
    out["num_input_tokens"] = batch["num_prompt_tokens"]
    return out


class Processor:
    """`Dataset -> Dataset`, as `ray.data.llm`'s Processor: preprocess, our CPU and GPU stages, postprocess."""

    def __init__(self, config: vLLMEngineProcessorConfig, preprocess: Callable[[dict], dict] | None = None,
                 postprocess: Callable[[dict], dict] | None = None, preprocess_map_kwargs: dict | None = None,
                 postprocess_map_kwargs: dict | None = None):
        self.config = config
        self.job = CaptionProcessor(config.job_config()).config  # max_model_len resolved from the checkpoint
        self.preprocess, self.postprocess = preprocess, postprocess
        self.preprocess_map_kwargs = preprocess_map_kwargs or {}
        self.postprocess_map_kwargs = postprocess_map_kwargs or {}

    def log_input_column_names(self) -> None:
        log.info("rows need 'messages' (OpenAI chat format, media as image_url/image/video_url parts) and may "
                 "have 'sampling_params'")

    def __call__(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        c = self.job
        pre, max_tokens = self.preprocess, c.max_new_tokens
        # One map for the user's preprocess and our conversion: PIL images never become a Dataset column.
        ds = ds.map(lambda row: caption_row(pre(row) if pre else row, max_tokens), **self.preprocess_map_kwargs)
        ds = CaptionProcessor(c, {}, input_checked=True).preprocess(ds)
        ds = apply_generate_stage(ds, with_local_model(_RowSamplingStage), c, c.tp if _gpu_available() else 0)
        model_name = c.model.rstrip("/").rsplit("/", 1)[-1]
        ds = ds.map_batches(_finish, fn_args=(model_name,), batch_format="numpy", num_cpus=0)
        if self.postprocess is not None:
            ds = ds.map(self.postprocess, **self.postprocess_map_kwargs)
        return ds


def build_processor(config: vLLMEngineProcessorConfig, preprocess: Callable[[dict], dict] | None = None,
                    postprocess: Callable[[dict], dict] | None = None, preprocess_map_kwargs: dict | None = None,
                    postprocess_map_kwargs: dict | None = None, builder_kwargs: dict | None = None) -> Processor:
    """`ray.data.llm.build_processor` with our engine; see the module docstring for what differs."""
    if builder_kwargs:
        raise ValueError(f"builder_kwargs are not supported: {sorted(builder_kwargs)}")
    return Processor(config, preprocess, postprocess, preprocess_map_kwargs, postprocess_map_kwargs)


build_llm_processor = build_processor  # Ray's earlier name
