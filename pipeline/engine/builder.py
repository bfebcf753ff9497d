"""Build an `Engine` for a checkpoint directory: model, runner sized to memory, tokenizer, stop ids.

On the CPU (the demo, CI), a replica's torch uses every CPU of its process (or `$VLMCAP_CPU_THREADS`): Ray
starts an actor that reserves no CPU (the batch job's generate stage) with OMP_NUM_THREADS=1, which left the
model on one core.

KV slots: on the GPU, `(total * gpu_memory_utilization - used after loading - activation_reserve) /
bytes per slot`; on the CPU, `cpu_kv_cache_gb / bytes per slot`; either capped by `max_num_seqs`. Which
runner is used follows `config.json`'s `architectures[0]`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.registry import architecture, model_class
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine

log = logging.getLogger(__name__)


def default_stop_ids(ckpt_dir: Path) -> tuple[int, ...]:
    for name in ("generation_config.json", "config.json"):
        path = ckpt_dir / name
        if path.exists():
            cfg = json.loads(path.read_text())
            eos = cfg.get("eos_token_id", (cfg.get("text_config") or {}).get("eos_token_id"))
            if eos is not None:
                return tuple(eos) if isinstance(eos, list) else (int(eos),)
    return ()


def plan_slots(slot_bytes: int, config: EngineConfig, device: torch.device) -> int:
    if device.type != "cuda":
        slots = min(config.max_num_seqs, int(config.cpu_kv_cache_gb * 2**30 // slot_bytes))
        if slots < 1:
            raise RuntimeError(f"no room for a single KV slot ({slot_bytes / 2**30:.2f} GiB each) in the CPU KV "
                               f"budget of {config.cpu_kv_cache_gb} GiB; lower max_model_len")
        log.info("KV cache (CPU): %d slots x %.1f MiB", slots, slot_bytes / 2**20)
        return slots
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    budget = total * config.gpu_memory_utilization - (total - free) - config.activation_reserve_gb * 2**30
    slots = min(config.max_num_seqs, int(budget // slot_bytes))
    if slots < 1:
        raise RuntimeError(f"no room for a single KV slot ({slot_bytes / 2**30:.2f} GiB each, "
                           f"{free / 2**30:.1f} GiB free); lower max_model_len or use more GPUs")
    log.info("KV cache: %d slots x %.1f MiB", slots, slot_bytes / 2**20)
    return slots


def make_runner(model, config: EngineConfig, ckpt_dir: Path, device: torch.device, pad_id: int):
    dtype = next(model.parameters()).dtype
    name = type(model).__name__
    if name == "MllamaForConditionalGeneration":
        from pipeline.engine.runners.mllama import MllamaRunner

        pre = json.loads((ckpt_dir / "preprocessor_config.json").read_text())
        slots = plan_slots(MllamaRunner.slot_bytes(model, config.max_model_len, config.max_images_per_request, dtype),
                           config, device)
        return MllamaRunner(model, slots, config.max_model_len, config.max_images_per_request, pad_id,
                            tuple(pre["image_mean"]), tuple(pre["image_std"]))
    if name == "LlavaOnevisionForConditionalGeneration":
        from pipeline.engine.runners.onevision import OneVisionRunner

        slots = plan_slots(OneVisionRunner.slot_bytes(model, config.max_model_len, dtype), config, device)
        return OneVisionRunner.create(model, slots, config.max_model_len, pad_id, ckpt_dir)
    raise ValueError(f"no engine runner for {name}")


def build_engine(ckpt_dir: str | Path, config: EngineConfig | None = None, device: str | None = None,
                 model=None, tokenizer=None, random_weights: bool = False) -> Engine:
    ckpt_dir = Path(ckpt_dir)
    config = config or EngineConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None and random_weights:  # benchmarks: the checkpoint's shapes, no weights read
        from models.random_weights import random_model

        model = random_model(model_class(architecture(ckpt_dir)), ckpt_dir, getattr(torch, config.dtype), device)
    if model is None:
        model = model_class(architecture(ckpt_dir)).from_pretrained(
            ckpt_dir, dtype=getattr(torch, config.dtype), device=device)
    if tokenizer is None and (ckpt_dir / "tokenizer.json").exists():
        from models.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(ckpt_dir)
    pad_id = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0
    runner = make_runner(model, config, ckpt_dir, device, pad_id)
    return Engine(runner, tokenizer, config, default_stop_ids(ckpt_dir))


def build_replica_engine(ckpt_dir: str | Path, config: EngineConfig, tp: int, random_weights: bool,
                         on_rank_death: Callable[[str], None]) -> tuple[Engine, Any]:
    """One replica's engine, as the batch job's GPU stage and the endpoint build it: (engine, its
    tensor-parallel replica, or None on one GPU). With `tp` > 1 the ranks run in processes of their own
    (pipeline/engine/tp_engine.py) and `on_rank_death` is called when one is lost."""
    if tp > 1:
        from pipeline.engine.tp_engine import build_tp_engine

        return build_tp_engine(Path(ckpt_dir), tp, config, random_weights=random_weights,
                               on_rank_death=on_rank_death)
    if not torch.cuda.is_available():
        use_every_cpu()
    return build_engine(ckpt_dir, config, random_weights=random_weights), None


def use_every_cpu() -> int:
    """Let torch use this process's CPUs (`$VLMCAP_CPU_THREADS` overrides); returns the thread count."""
    threads = int(os.environ.get("VLMCAP_CPU_THREADS") or len(os.sched_getaffinity(0)))
    if threads != torch.get_num_threads():
        log.info("torch on the CPU: %d threads (was %d)", threads, torch.get_num_threads())
        torch.set_num_threads(threads)
    return threads
