"""The GPU stage: one Ray actor = one model replica running the engine on its own thread.

Ray Data calls `__call__` with a batch of preprocessed rows; several calls run at once on the actor's
threads (`batches_in_flight`), each handing its requests to the engine thread and waiting for exactly
its completions. The engine thus always has the next batches' requests queued and never drains between
Ray batches. Rows that already carry an error (from preprocessing) skip the engine.

Failure policy (RELIABILITY.md): a per-request problem becomes an error completion inside the engine; a
broken engine (`EngineDeadError`, CUDA errors) ends the process with `os._exit(1)` so Ray restarts the
actor and retries its batches; we never raise `sys.exit` from an actor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from pathlib import Path

import numpy as np

from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Completion, Request
from pipeline.job_config import JobConfig
from pipeline.kept import kept_columns
from pipeline.media_codec import codec_for
from pipeline.metrics import StageMetrics

log = logging.getLogger(__name__)


class EngineThread:
    """Owns the engine; requests arrive on a queue, each resolves its own Future with its Completion.

    Every `report_s` seconds it logs how the replica spent that time: busy in `step()` vs idle with no
    work (a starved GPU shows up here), mean running/waiting sequences per step and tokens/s."""

    def __init__(self, engine, report_s: float = 60.0):
        self.engine = engine
        self.inbox: queue.Queue[tuple[Request, Future]] = queue.Queue()
        self.futures: dict[str, Future] = {}
        self.report_s = report_s
        self.window = _Window({})
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.stopped = threading.Event()
        self.thread.start()

    def stop(self) -> None:
        """End the loop after its current turn (tests; a GPU actor lives as long as its process)."""
        self.stopped.set()
        self.thread.join()

    def submit(self, request: Request) -> Future:
        fut: Future = Future()
        self.inbox.put((request, fut))
        return fut

    def _loop(self) -> None:
        try:
            while not self.stopped.is_set():
                t0 = time.perf_counter()
                block = not self.engine.has_work()
                try:
                    while True:
                        request, fut = self.inbox.get(block=block, timeout=None if not block else 1.0)
                        block = False
                        self.futures[request.request_id] = fut
                        self.engine.add(request)
                except queue.Empty:
                    pass
                t1 = time.perf_counter()
                if self.engine.has_work():
                    sched = self.engine.scheduler
                    self.window.steps += 1
                    self.window.running += len(sched.running)
                    self.window.waiting += len(sched.waiting)
                    for c in self.engine.step():
                        fut = self.futures.pop(c.request_id)
                        # A caller may have cancelled its Future (an online client that went away); that
                        # is its business, not a reason to end the replica.
                        with contextlib.suppress(InvalidStateError):
                            fut.set_result(c)
                t2 = time.perf_counter()
                self.window.idle += t1 - t0
                self.window.busy += t2 - t1
                if t2 - self.window.start >= self.report_s:
                    self._report()
        except BaseException:  # the replica's state is unknown: let Ray restart the actor
            log.exception("engine thread died; exiting so Ray restarts this replica")
            os._exit(1)

    def _report(self) -> None:
        """The `[engine]` line; a statistic, so a failure here is logged, never fatal to the replica."""
        stats = dict(self.engine.stats)
        try:
            gaps = self.engine.timer.gaps_ms()
            self.window.gaps = "" if gaps is None else (
                f", token gap p50 {gaps[0]:.0f} / p99 {gaps[1]:.0f} / max {gaps[2]:.0f} ms")
            print(self.window.line(stats), file=sys.stderr, flush=True)  # forwarded to the driver
        except Exception:  # noqa: BLE001
            log.exception("engine report failed (the engine goes on)")
        self.window = _Window(stats)


class _Window:
    """Engine-thread time accounting over one reporting window."""

    def __init__(self, stats: dict):
        self.start, self.base = time.perf_counter(), stats
        self.busy = self.idle = self.unpack = 0.0
        self.steps = self.running = self.waiting = 0
        self.gaps = ""

    def line(self, stats: dict) -> str:
        span = max(time.perf_counter() - self.start, 1e-9)
        steps = max(self.steps, 1)

        def delta(key: str) -> float:
            return stats.get(key, 0) - self.base.get(key, 0)

        admissions = delta("admissions")
        admitted = "" if not admissions else (
            f", {admissions} admissions of {delta('admitted') / admissions:.1f} requests "
            f"({1e3 * delta('prefill_s') / admissions:.0f} ms each)")
        return (f"[engine] last {span:.0f}s: busy {self.busy / span:.0%}, idle {self.idle / span:.0%}, "
                f"{self.steps} steps of {1e3 * self.busy / steps:.1f} ms, running {self.running / steps:.1f}, "
                f"waiting {self.waiting / steps:.1f}, {delta('generated_tokens') / span:.0f} tokens/s{admitted}, "
                f"unpacking media on other threads {self.unpack / span:.0%}{self.gaps}")


class GenerateStage:
    def __init__(self, config: JobConfig):
        import torch

        from pipeline.engine.builder import build_replica_engine

        if config.fault_injection.get("gpu_init_exit"):
            os._exit(1)  # reliability tests: a process death during construction, as a driver crash would be
        self.config = config
        self.codec = codec_for(config.model, config)
        engine_cfg = EngineConfig(max_num_seqs=config.max_num_seqs, max_model_len=config.max_model_len,
                                  gpu_memory_utilization=config.gpu_memory_utilization, cuda_graphs=config.cuda_graphs,
                                  dtype=config.dtype if torch.cuda.is_available() else "float32",
                                  max_images_per_request=self.codec.max_images_per_request,
                                  max_prefill_requests=config.max_prefill_requests,
                                  max_decode_stall_ms=config.max_decode_stall_ms,
                                  stage_vision_images=config.stage_vision_images)
        # with tp > 1, one process per GPU of this actor, rank 0 (here) driving them in lockstep
        engine, self.replica = build_replica_engine(config.model, engine_cfg, config.tp, config.random_weights,
                                                    self._rank_died)
        self.engine = EngineThread(engine, config.engine_report_s)
        self.sampling = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                       top_p=config.top_p, top_k=config.top_k, seed=config.seed, stop=config.stop,
                                       ignore_eos=config.ignore_eos)
        self.batches = 0
        self.lock = threading.Lock()
        self.metrics = StageMetrics("generate")

    def _rank_died(self, message: str) -> None:
        """A tensor-parallel rank is gone: this replica cannot finish its steps (under CUDA graphs rank 0
        would wait for the lost peer forever). End the actor; Ray restarts it and retries its rows."""
        print(f"[generate] {message}; ending this replica (pid {os.getpid()}) so that Ray restarts it and "
              "retries its rows", file=sys.stderr, flush=True)
        if self.replica is not None:  # None while the replica is still starting
            self.replica.kill_workers()
        os._exit(1)

    def _maybe_fail(self) -> None:
        """Fault injection for the reliability tests, once per job (marker file): on the k-th batch die
        (`gpu_exit_on_batch`) or SIGKILL the last tensor-parallel rank (`tp_rank_kill_on_batch`); and
        `generate_delay_s`: every batch waits that long (a job that must still be running when a test
        interrupts it)."""
        fi = self.config.fault_injection
        if fi.get("generate_delay_s"):
            time.sleep(float(fi["generate_delay_s"]))
        kind = next((k for k in ("gpu_exit_on_batch", "tp_rank_kill_on_batch") if k in fi), None)
        if kind is None:
            return
        with self.lock:
            self.batches += 1
            n = self.batches
        marker = Path(fi["marker"])
        if n == fi[kind] and not marker.exists():
            marker.write_text(str(os.getpid()))
            if kind == "gpu_exit_on_batch":
                os._exit(1)
            os.kill(self.replica.worker_pids[-1], signal.SIGKILL)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_fail()
        t0 = time.perf_counter()
        ids = batch["id"]
        futures: list[Future | None] = []
        for i in range(len(ids)):
            if isinstance(batch["error"][i], str):  # an all-null column may arrive as NaNs, not Nones
                futures.append(None)
                continue
            u0 = time.perf_counter()
            media = self.codec.unpack(batch, i)
            self.engine.window.unpack += time.perf_counter() - u0  # a statistic: a rare lost update is fine
            prompt = [int(t) for t in batch["prompt_ids"][i]]
            futures.append(self.engine.submit(Request(str(ids[i]), prompt, media, self.sampling)))
        results: list[Completion | None] = [f.result() if f is not None else None for f in futures]
        out = kept_columns(batch, also=("id", "error", "num_prompt_tokens"))
        out["text"] = np.array([r.text if r else None for r in results], dtype=object)
        out["finish_reason"] = np.array([r.finish_reason if r else "error" for r in results], dtype=object)
        out["error"] = np.array([r.error if r else batch["error"][i] for i, r in enumerate(results)], dtype=object)
        out["num_generated_tokens"] = np.array([r.num_generated_tokens if r else 0 for r in results], dtype=np.int32)
        seconds = time.perf_counter() - t0
        out["gpu_batch_seconds"] = np.full(len(ids), seconds)
        self.metrics.record(rows=len(ids), errors=sum(r is not None and r.error is not None for r in results),
                            seconds=seconds, tokens=int(out["num_generated_tokens"].sum()))
        return out
