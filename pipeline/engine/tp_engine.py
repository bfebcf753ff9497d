"""An `Engine` over a tensor-parallel replica: rank 0 schedules and samples, every rank runs the model.

    engine, replica = build_tp_engine(ckpt_dir, tp=2, config=EngineConfig(...))
    try:
        for completion in engine.generate(requests): ...
    finally:
        replica.shutdown()

Ranks 1..tp-1 are started with multiprocessing's "spawn", which re-imports the caller's `__main__`: a script
that builds a replica must do so under `if __name__ == "__main__":` (as jobs/bench.py does).

Contract:
- Every rank holds a `RunnerShard`: its shard of the model (ops/parallel.py) and a runner of its own (KV
  cache of its KV heads). The slot count is the minimum over ranks, so all caches agree.
- Rank 0's `Engine` talks to a `TPRunner`, which mirrors each runner call on all ranks
  (pipeline/engine/distributed.Replica.call): `prefill(prompts, media, slots)` ships the prompts and the
  (CPU, uint8) media; `decode(batch)` ships the step's tokens and positions, which every rank copies into
  its static buffers before running the same step. Only rank 0's logits are used (all ranks hold the
  same gathered logits), so sampling and its generators live on rank 0 alone.
- CUDA graphs: each rank captures its own decode graphs (NCCL all-reduces inside) at start, in lockstep,
  and replays them per step; the broadcast of the step's inputs stays outside the graph. Rank 0's engine
  therefore runs its `GraphedStep` eagerly over the `TPRunner`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ops.parallel import ParallelContext
from pipeline.engine.config import EngineConfig
from pipeline.engine.cuda_graphs import GraphedStep, default_buckets
from pipeline.engine.distributed import Replica
from pipeline.engine.engine import Engine


class RunnerShard:
    """Rank-local: the model shard, its runner, and its own decode graphs."""

    def __init__(self, ctx: ParallelContext, ckpt_dir: str, config: EngineConfig, pad_id: int,
                 random_weights: bool = False):
        from models.registry import architecture, model_class
        from pipeline.engine.builder import make_runner

        device = torch.device(ctx.device)
        cls = model_class(architecture(ckpt_dir))
        dtype = getattr(torch, config.dtype)
        if random_weights:  # benchmarks: this rank's shard at the config's shapes, nothing read
            from models.random_weights import random_model

            model = random_model(cls, ckpt_dir, dtype, device, tp=ctx)
        else:
            kwargs = {"tp": ctx} if ctx.world_size > 1 else {}  # models without TP still run at tp=1
            model = cls.from_pretrained(ckpt_dir, dtype=dtype, device=device, **kwargs)
        runner = make_runner(model, config, Path(ckpt_dir), device, pad_id)
        slots = int(ctx.all_gather(torch.tensor([runner.num_slots], device=device), dim=0).min().item())
        if slots != runner.num_slots:
            capped = dataclasses.replace(config, max_num_seqs=slots)
            runner = make_runner(model, capped, Path(ckpt_dir), device, pad_id)
        self.ctx, self.runner = ctx, runner
        self.graphed = GraphedStep(runner.decode, default_buckets(runner.num_slots),
                                   config.cuda_graphs and device.type == "cuda")
        self.graphed.capture()

    def prefill(self, prompts: list[list[int]], media: list[Any], slots: list[int]) -> torch.Tensor:
        return self.runner.prefill(prompts, media, slots)

    def decode(self, batch: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.runner.tokens[:batch].copy_(tokens)
        self.runner.positions[:batch].copy_(positions)
        return self.graphed(batch)


class TPRunner:
    """Rank 0's runner as the engine sees it; each call runs on every rank in lockstep."""

    def __init__(self, replica: Replica):
        self.replica = replica
        local = replica.local.runner
        self.num_slots, self.max_len, self.device = local.num_slots, local.max_len, local.device
        self.tokens, self.positions = local.tokens, local.positions

    def check(self, prompt_ids: list[int], media: Any) -> str | None:
        return self.replica.local.runner.check(prompt_ids, media)  # host-side only: nothing to mirror

    def prefill(self, prompts: list[list[int]], media: list[Any], slots: list[int]) -> torch.Tensor:
        return self.replica.call("prefill", prompts, media, slots)

    def decode(self, batch: int) -> torch.Tensor:
        return self.replica.call("decode", batch, self.tokens[:batch].cpu(), self.positions[:batch].cpu())


def build_tp_engine(ckpt_dir: str | Path, tp: int, config: EngineConfig | None = None, *,
                    backend: str | None = None, devices: list[int] | None = None,
                    tokenizer: Any = None, random_weights: bool = False,
                    on_rank_death: Callable[[str], None] | None = None) -> tuple[Engine, Replica]:
    """Start a replica of `tp` ranks for `ckpt_dir` and an engine driving it (the caller shuts it down).

    `random_weights`: every rank fills its own shard at the config's shapes (no checkpoint read).
    `on_rank_death`: see pipeline/engine/distributed.py (a Ray actor ends its process there)."""
    from pipeline.engine.builder import default_stop_ids

    ckpt_dir = Path(ckpt_dir)
    config = config or EngineConfig()
    if tokenizer is None and (ckpt_dir / "tokenizer.json").exists():
        from models.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(ckpt_dir)
    pad_id = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0
    replica = Replica.start(tp, "pipeline.engine.tp_engine:RunnerShard",
                            (str(ckpt_dir), config, pad_id, random_weights),
                            backend=backend, devices=devices, on_rank_death=on_rank_death)
    try:
        engine = Engine(TPRunner(replica), tokenizer, dataclasses.replace(config, cuda_graphs=False),
                        default_stop_ids(ckpt_dir))
    except BaseException:
        replica.shutdown()
        raise
    return engine, replica
