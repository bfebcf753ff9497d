"""Engine settings (frozen; built once from the job config and never mutated)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 256  # upper bound on concurrent sequences (KV slots); memory may allow fewer
    max_model_len: int = 1024  # prompt + generated tokens per sequence
    max_images_per_request: int = 1
    max_prefill_tokens: int = 16384  # token budget of one admission (prefill) batch (OV-7B: 8.08 -> 8.45 img/s vs 8192)
    max_prefill_requests: int = 32  # also bounds the vision encoder's batch
    gpu_memory_utilization: float = 0.90
    activation_reserve_gb: float = 8.0  # kept free for prefill/vision activations when sizing the KV cache
    # On the CPU there is no free-memory probe to size against: the KV cache stays within this many GiB
    # (slots = min(max_num_seqs, this / bytes per slot)). OneVision's default max_model_len (~10k tokens)
    # at 256 slots would otherwise commit ~8 GiB of zeros for the 12M-parameter demo model.
    cpu_kv_cache_gb: float = 2.0
    cuda_graphs: bool = True
    dtype: str = "bfloat16"
    # While sequences are decoding, admit only as many requests per step as the measured prefill cost fits
    # in this many ms (at least one), so running sequences never wait long for their next token. None: admit
    # full groups (best throughput; a 16-image Mllama group stalls decoding ~0.85 s on an H200).
    max_decode_stall_ms: float | None = None
    step_trace: str | None = None  # a directory: one JSON line per step (pipeline/engine/step_trace.py)
    # While sequences are decoding, encode a waiting group's images at most this many per step (under
    # max_decode_stall_ms only as many as their measured encode time fits in it), then admit the
    # group in one cheap step (pipeline/engine/staging.py; Mllama on one GPU). 0: off (vision in the admission).
    stage_vision_images: int = 0

    def __post_init__(self):
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        for name in ("max_num_seqs", "max_model_len", "max_images_per_request", "max_prefill_tokens",
                     "max_prefill_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.stage_vision_images < 0:
            raise ValueError("stage_vision_images must be >= 0")
        if not self.cpu_kv_cache_gb > 0:
            raise ValueError("cpu_kv_cache_gb must be > 0")
        if self.max_decode_stall_ms is not None and self.max_decode_stall_ms <= 0:
            raise ValueError("max_decode_stall_ms must be > 0 (or None)")
