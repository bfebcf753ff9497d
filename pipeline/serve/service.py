"""One replica's serving state: the model's codec, the shared engine thread, admission control, metrics.

Contract:
- `ChatService(config)` loads the checkpoint (a local directory or an fsspec URL, cached per node as in
  the batch job), builds the engine exactly as the batch job's GPU stage does (`--tp` included) and starts
  the engine thread; `ready` is true once that returned (weights loaded, CUDA graphs captured). Tests may
  pass a prebuilt `engine`.
- `prepare(req)` turns a validated request into prompt ids + engine media on a worker thread (decoding and
  the processors are CPU work that must not block the event loop), through the same codec as a batch row
  (`messages` column convention), so the same messages and image give the same prompt ids and pixels.
  Refusals are typed `APIError`s (400), including a prompt + max_tokens over the context.
- `admission(n)` bounds the choices in flight (preprocessing included) at `max_pending`; above it a request
  gets 429 with `Retry-After`, so a burst queues in clients instead of in the replica's memory.
- Prompts are never logged; `record` writes one line per request (status, tokens, latency) and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import InputError
from ops.sampling import SamplingParams
from pipeline.context_len import resolve_max_model_len
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for
from pipeline.serve.messages import MediaLimits, split_media
from pipeline.serve.metrics import ServeMetrics
from pipeline.serve.schemas import APIError, ChatRequest
from pipeline.serve.stream_engine import AsyncEngine, ServeRequest

log = logging.getLogger("vlmcap.serve")


def _request_log() -> None:
    """The per-request lines go to stderr at INFO whatever the process's logging setup (uvicorn, a Serve
    replica, whose stderr Ray collects), once."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[serve] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass(frozen=True)
class ServeConfig:
    model: str
    served_model_name: str | None = None  # the `model` clients send; default: the checkpoint's folder name
    api_key: str | None = None
    max_model_len: int | None = None  # None: what the model's processor needs (pipeline/context_len.py)
    max_num_seqs: int = 64
    max_pending: int | None = None  # choices in flight per replica; None: 2 x the engine's slots
    default_max_tokens: int = 512  # when a request gives neither max_tokens nor max_completion_tokens
    default_temperature: float = 0.0  # the batch job's default (greedy); OpenAI's own default would be 1.0
    max_n: int = 8
    num_frames: int | None = None
    tp: int = 1
    dtype: str = "bfloat16"
    cuda_graphs: bool = True
    random_weights: bool = False
    max_prefill_requests: int = 32
    max_decode_stall_ms: float | None = 150.0  # online: admissions never stall running streams much longer
    preprocess_threads: int = 4
    max_body_bytes: int = 64 * 2**20
    media: MediaLimits = field(default_factory=MediaLimits)
    engine_report_s: float = 600.0
    # The engine in a process of its own (pipeline/serve/engine_process.py): its steps do not share the
    # replica's GIL with the event loop and Serve's threads. None: on where the replica has one GPU (an H200 at
    # concurrency 64: decode steps 19.8 ms against 22.7 in the replica's thread, one-request admissions 80
    # against 109 ms; BENCHMARKS.md, session 13), a thread on a CPU (no gain measured there, session 10).
    engine_process: bool | None = None
    step_trace: str | None = None  # a directory for the engine's per-step lines (pipeline/engine/step_trace.py)
    # See EngineConfig (pipeline/engine/staging.py). None: at most 4 for Mllama on one GPU (with the engine
    # process 0.82 of the offline engine's tokens/s at concurrency 64 on an H200 at a fixed 4 per step; 2 per
    # step: 0.79; unstaged in a thread: 0.60; since session 15 the stall budget trims slices to what fits,
    # not yet measured on a GPU), 0 where staging does not apply (OneVision, tensor parallelism) or on a CPU.
    stage_vision_images: int | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(str(self.model).rstrip("/")).name


def engine_placement(config: ServeConfig, arch: str, gpu: bool) -> tuple[bool, int]:
    """(run the engine in a process of its own, images staged per step): the config's values, or where it
    leaves them to the replica (None), what measured best there (see ServeConfig)."""
    from pipeline.engine.staging import can_stage

    # With tensor parallelism the replica's engine drives worker processes of its own: never measured from
    # inside an engine process on GPUs, so that stays opt-in.
    in_process = gpu and config.tp == 1 if config.engine_process is None else config.engine_process
    staged = config.stage_vision_images
    if staged is None:
        staged = 4 if gpu and config.max_decode_stall_ms and can_stage(arch, config.tp) else 0
    return in_process, staged


@dataclass
class Prepared:
    prompt_ids: list[int]
    media: Any
    max_new_tokens: int


class ChatService:
    def __init__(self, config: ServeConfig, engine: Any = None):
        from pipeline.model_cache import local_model_dir

        self.config = config
        self.model_name = config.model_name
        model_dir = local_model_dir(config.model, weights=engine is None and not config.random_weights)
        job = JobConfig(model=model_dir, input="-", output="-", prompt=None, messages_column="messages",
                        num_frames=config.num_frames, max_new_tokens=config.default_max_tokens,
                        max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs, tp=config.tp)
        self.job = resolve_max_model_len(job)
        self.codec = codec_for(model_dir, self.job)
        self.replica = None
        if engine is None:
            self.engine = self._build_engine(model_dir)
        else:  # tests and benchmarks: a prebuilt engine (run in a thread here) or AsyncEngine
            self.engine = engine if isinstance(engine, AsyncEngine) else AsyncEngine.in_thread(engine,
                                                                                             config.engine_report_s)
        self.max_len = self.job.max_model_len
        slots = self.engine.slots()
        self.max_pending = config.max_pending if config.max_pending is not None else 2 * slots
        videos = 1 if "video" in self.codec.max_media_tokens() else 0
        self.limits = dataclasses.replace(config.media, max_images=min(config.media.max_images,
                                                                       self.codec.max_images_per_request),
                                          max_videos=min(config.media.max_videos, videos))
        self.pending = 0  # touched only on the event loop's thread
        self.pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="preprocess")
        self.metrics = ServeMetrics()
        _request_log()
        self.ready = True

    def _build_engine(self, model_dir: str) -> AsyncEngine:
        import torch

        from models.registry import architecture
        from pipeline.engine.config import EngineConfig

        c = self.config
        gpu = torch.cuda.is_available()
        in_process, staged = engine_placement(c, architecture(Path(model_dir)), gpu)
        cfg = EngineConfig(max_num_seqs=c.max_num_seqs, max_model_len=self.job.max_model_len, cuda_graphs=c.cuda_graphs,
                           dtype=c.dtype if gpu else "float32",
                           max_images_per_request=self.codec.max_images_per_request,
                           max_prefill_requests=c.max_prefill_requests, max_decode_stall_ms=c.max_decode_stall_ms,
                           step_trace=c.step_trace, stage_vision_images=staged)
        budget = f"{c.max_decode_stall_ms:g} ms" if c.max_decode_stall_ms else "none"
        print(f"[serve] engine: {'own process' if in_process else 'thread of the replica'}, {c.max_num_seqs} slots, "
              f"max_model_len {self.job.max_model_len}, decode-stall budget {budget}, vision staged "
              f"{f'{staged} images per step' if staged else 'off'}", file=sys.stderr, flush=True)
        if in_process:
            from pipeline.serve.engine_process import ProcessDriver

            return AsyncEngine(ProcessDriver("pipeline.serve.engine_process:build_serve_engine",
                                             (model_dir, cfg, c.tp, c.random_weights), self.codec.tokenizer,
                                             c.engine_report_s))
        from pipeline.engine.builder import build_replica_engine

        engine, self.replica = build_replica_engine(model_dir, cfg, c.tp, c.random_weights, self._rank_died)
        return AsyncEngine.in_thread(engine, c.engine_report_s)

    def _rank_died(self, message: str) -> None:
        # As in the batch job's GPU stage: the replica cannot finish its steps; Serve restarts it.
        print(f"[serve] {message}; ending this replica", file=sys.stderr, flush=True)
        if self.replica is not None:
            self.replica.kill_workers()
        os._exit(1)

    def healthy(self) -> bool:
        return self.ready and self.engine.alive()

    @contextlib.contextmanager
    def admission(self, n: int):
        if self.pending + n > self.max_pending:
            raise APIError(429, f"this replica has {self.pending} choices in flight (limit {self.max_pending}); "
                           "retry shortly", type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        self.pending += n
        self.metrics.pending(self.pending)
        try:
            yield
        finally:
            self.pending -= n
            self.metrics.pending(self.pending)

    async def prepare(self, req: ChatRequest) -> Prepared:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._prepare, req)

    def _prepare(self, req: ChatRequest) -> Prepared:
        messages, images, videos = split_media(req.messages, self.limits)
        row = {"messages": messages, "image": images or None, "video": videos[0] if videos else None}
        try:
            if images or videos:
                ids, blob = self.codec.prepare(row)
                media = self.codec.unpack({"media": [blob]}, 0)
            else:  # text only: the codec's prompt path without media
                ids, media = self.codec.prompt_ids(row, 0, 0), None
        except InputError as exc:
            raise APIError(400, str(exc), param="messages", code=exc.kind) from None
        room = self.max_len - len(ids)
        wanted = req.max_new_tokens
        max_new = min(self.config.default_max_tokens, room) if wanted is None else wanted
        if max_new < 1 or len(ids) + max_new > self.max_len:
            raise APIError(400, f"this model's maximum context length is {self.max_len} tokens; the messages take "
                           f"{len(ids)} and {max_new if wanted is not None else 'at least 1'} more were asked for",
                           param="messages", code="context_length_exceeded")
        return Prepared(ids, media, max_new)

    def engine_requests(self, p: Prepared, req: ChatRequest) -> list[ServeRequest]:
        temperature = self.config.default_temperature if req.temperature is None else req.temperature
        out = []
        for i in range(req.n):
            sampling = SamplingParams(max_new_tokens=p.max_new_tokens, temperature=temperature,
                                      top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                                      seed=None if req.seed is None else req.seed + i, stop=req.stop_strings)
            # Every choice gets the same (read-only) media: the runner copies it to the device.
            out.append(ServeRequest(os.urandom(8).hex(), list(p.prompt_ids), p.media, sampling))
        return out

    def record(self, status: int, prompt_tokens: int, generated: int, seconds: float,
               first_token_s: float | None) -> None:
        """One log line per request (never the prompt) and the request metrics."""
        ttft = "-" if first_token_s is None else f"{first_token_s * 1e3:.0f}"
        log.info("status=%d prompt_tokens=%d completion_tokens=%d latency_ms=%.0f ttft_ms=%s", status,
                 prompt_tokens, generated, seconds * 1e3, ttft)
        self.metrics.request(status, generated, seconds, first_token_s)

    def shutdown(self) -> None:
        self.ready = False
        self.engine.stop()
        self.pool.shutdown(wait=False)
        if self.replica is not None:
            self.replica.shutdown()
