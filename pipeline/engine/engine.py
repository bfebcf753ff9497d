"""The generation engine: requests in, completions out, on one model replica. Never imports Ray.

    engine = Engine(runner, tokenizer, config, default_stop_ids)
    for completion in engine.generate(requests):   # keeps admitting while others finish
        ...

One `step()` admits what fits into free slots (batched prefill, vision encoder batched across the
admitted requests), decodes one token for every running sequence (a CUDA-graph replay on the GPU), and
returns the completions that finished. Per-request problems never raise: a request that can never fit
(prompt + max_new_tokens > max_model_len, too many images, image tokens != images) or whose admission
fails becomes an error completion, and the others go on. A failure inside the shared decode step means
the replica's state is unknown: it raises `EngineDeadError` so the caller can restart the replica.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ops.sampling import make_generator, sample
from pipeline.engine.config import EngineConfig
from pipeline.engine.cuda_graphs import GraphedStep, default_buckets
from pipeline.engine.request import Completion, Request, Sequence
from pipeline.engine.scheduler import Scheduler
from pipeline.engine.staging import VisionStaging
from pipeline.engine.step_timer import StepTimer
from pipeline.engine.step_trace import StepTrace

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The shared decode state is broken; the replica must be restarted."""


class Engine:
    def __init__(self, runner: Any, tokenizer: Any | None, config: EngineConfig, default_stop_ids: tuple[int, ...]):
        self.runner, self.tokenizer, self.config = runner, tokenizer, config
        self.default_stop_ids = tuple(default_stop_ids)
        self.scheduler = Scheduler(runner.num_slots, config.max_prefill_tokens, config.max_prefill_requests)
        self.staging = (VisionStaging(runner, self.scheduler, config.stage_vision_images, sync=self._sync_device)
                        if config.stage_vision_images else None)
        self.staged_costs = StepTimer()  # staged admissions' own cost line (their vision ran before)
        on_gpu = runner.device.type == "cuda"
        self.decode = GraphedStep(runner.decode, default_buckets(runner.num_slots), config.cuda_graphs and on_gpu)
        self.decode.capture()
        self.ready: list[Completion] = []
        self.stats = {"prefill_tokens": 0, "generated_tokens": 0, "decode_steps": 0, "admissions": 0, "admitted": 0,
                      "prefill_s": 0.0}
        self.timer = StepTimer()
        self.trace = StepTrace(config.step_trace) if config.step_trace else None
        self.gathering_since: float | None = None  # see _gathering

    # --- public API -----------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        problem = self._check(request)
        if problem:
            self.ready.append(Completion.failed(request, problem))
        else:
            self.scheduler.add(request)

    def step(self) -> list[Completion]:
        t0 = self.timer.clock()
        running_before = bool(self.scheduler.running)
        admitted = self._admit()
        t1, width = self.timer.clock(), 0
        if self.scheduler.running:
            self.timer.decode_started(running_before)
            width = self.scheduler.decode_width
            self._decode_step()
        else:
            self.timer.idle()
        if self.trace is not None:
            s = self.scheduler
            self.trace.record(t0, admitted, t1 - t0, width, self.timer.clock() - t1,
                              len(s.waiting), len(s.running))
            if not s.running:
                self.trace.flush()
        done, self.ready = self.ready, []
        return done

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.ready) or (self.staging is not None and self.staging.busy)

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Stream completions (in finishing order) while pulling requests only as slots free up."""
        pending = iter(requests)
        exhausted = False
        while True:
            while not exhausted and len(self.scheduler.waiting) < self.scheduler.max_prefill_requests:
                nxt = next(pending, None)
                if nxt is None:
                    exhausted = True
                else:
                    self.add(nxt)
            if not self.has_work():
                return
            yield from self.step()

    # --- internals ------------------------------------------------------------------------------
    def _sync_device(self) -> None:
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)

    def _check(self, r: Request) -> str | None:
        need = len(r.prompt_ids) + r.sampling.max_new_tokens
        if not r.prompt_ids:
            return "prompt_error: empty prompt"
        if need > self.runner.max_len:
            return (f"too_long: prompt ({len(r.prompt_ids)} tokens) + max_new_tokens ({r.sampling.max_new_tokens})"
                    f" = {need} > max_model_len {self.runner.max_len}")
        problem = self.runner.check(r.prompt_ids, r.media)
        return f"prompt_error: {problem}" if problem else None

    def _stop_ids(self, r: Request) -> frozenset[int]:
        if r.sampling.ignore_eos:
            return frozenset()
        ids = r.sampling.stop_token_ids
        return frozenset(self.default_stop_ids if ids is None else ids)

    def _gathering(self, limit: int | None) -> bool:
        """Under a decode-stall budget with at least 3/4 of the slots taken, wait (at most the budget) until
        `limit` requests can be admitted together: one admission of `limit` requests stalls the running
        sequences once, where `limit` one-request admissions would each pay the prefill step's fixed cost (an
        online endpoint near its concurrency limit frees about one slot per step, and its clients send the
        next request a round trip later)."""
        s, budget = self.scheduler, self.config.max_decode_stall_ms
        free = len(s.free)
        # Only while the engine is mostly full: with many free slots (light load) a request is admitted at once.
        if (limit is None or budget is None or not s.waiting or free == 0 or min(free, len(s.waiting)) >= limit
                or 4 * free > free + len(s.running)):
            self.gathering_since = None
            return False
        now = self.timer.clock()
        if self.gathering_since is None:
            self.gathering_since = now
        if now - self.gathering_since < budget / 1e3:
            return True
        self.gathering_since = None
        return False

    def _admit(self) -> int:
        """Admit (prefill) what the scheduler and the stall budget allow; returns how many were admitted."""
        if self.staging is not None and (self.staging.busy or self.scheduler.running):
            # a slice of a group's images (as many as their measured encode time fits in the stall budget), or the
            # encoded group; groups sized to the budget, starting from one request until a staged admission was timed
            budget = self.config.max_decode_stall_ms
            limit = self.staged_costs.admission_limit(budget, True)
            ready = self.staging.advance(1 if limit is None and budget is not None else limit,
                                         None if budget is None else budget / 1e3)
            self.ready += self.staging.failed
            self.staging.failed.clear()
            return 0 if ready is None else self._admit_batch(*ready, costs=self.staged_costs)
        limit = self.timer.admission_limit(self.config.max_decode_stall_ms, bool(self.scheduler.running))
        if self._gathering(limit):
            return 0
        batch = self.scheduler.next_admission(limit)
        return self._admit_batch(batch, None, costs=self.timer) if batch else 0

    def _admit_batch(self, batch: list[tuple[Request, int]], encoded: list[Any] | None, costs: StepTimer) -> int:
        """Prefill `batch` (with its staged vision states, if any); a failure is isolated to its request.
        Its time goes to `costs`: staged admissions (vision done before) keep a cost line of their own."""
        t0 = self.timer.clock()
        try:
            self._prefill(batch, encoded)
            seconds = self.timer.clock() - t0
            costs.prefill_done(len(batch), seconds)
            self.stats["admissions"] += 1
            self.stats["admitted"] += len(batch)
            self.stats["prefill_s"] += seconds
            return len(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the request that broke admission
            if len(batch) == 1:
                request, slot = batch[0]
                log.warning("request %s failed at admission: %r", request.request_id, exc)
                self.scheduler.release(slot)
                self.ready.append(Completion.failed(request, f"engine_error: {type(exc).__name__}: {exc}"))
                return 0
            admitted = 0
            for i, item in enumerate(batch):
                try:
                    self._prefill([item], None if encoded is None else [encoded[i]])
                    admitted += 1
                except Exception as one_exc:  # noqa: BLE001
                    self.scheduler.release(item[1])
                    self.ready.append(Completion.failed(item[0], f"engine_error: {type(one_exc).__name__}: {one_exc}"))
            return admitted

    def _prefill(self, batch: list[tuple[Request, int]], encoded: list[Any] | None = None) -> None:
        requests = [r for r, _ in batch]
        staged = {} if encoded is None else {"encoded": encoded}  # only runners that stage take it
        logits = self.runner.prefill([r.prompt_ids for r in requests], [r.media for r in requests],
                                     [s for _, s in batch], **staged)
        seqs = [Sequence(r, slot, self._stop_ids(r),
                         None if r.sampling.greedy else make_generator(r.sampling.seed, self.runner.device))
                for r, slot in batch]
        self.stats["prefill_tokens"] += sum(len(r.prompt_ids) for r in requests)
        for seq in seqs:
            self.scheduler.start(seq)
        self._append(seqs, logits)

    def _decode_step(self) -> None:
        width = self.scheduler.decode_width
        seqs = list(self.scheduler.running.values())
        # Python lists, then one tensor each: a tensor item store per sequence cost ~4 us of host time, which
        # the GPU waits for (each step ends in a sync), ~0.25 ms a step at 64 sequences.
        tokens, positions = [0] * width, [0] * width
        for s in seqs:
            tokens[s.slot] = s.output[-1]
            positions[s.slot] = s.length - 1
        r = self.runner
        r.tokens[:width].copy_(torch.tensor(tokens), non_blocking=True)
        r.positions[:width].copy_(torch.tensor(positions), non_blocking=True)
        try:
            logits = self.decode(width)
        except Exception as exc:
            raise EngineDeadError(f"decode step failed: {exc!r}") from exc
        rows = torch.tensor([s.slot for s in seqs], device=logits.device)
        self.stats["decode_steps"] += 1
        self._append(seqs, logits[rows])

    def _append(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = sample(logits, [s.request.sampling for s in seqs], [s.generator for s in seqs]).tolist()
        self.stats["generated_tokens"] += len(seqs)
        for seq, token in zip(seqs, tokens, strict=True):
            seq.append(token, token in seq.stop_ids)
            text = None
            if seq.request.sampling.stop and self.tokenizer is not None and seq.finish_reason != "stop":
                text = self._cut_at_stop(seq)
            if seq.finish_reason is not None:
                self._finish(seq, text)

    def _cut_at_stop(self, seq: Sequence) -> str | None:
        text = self.tokenizer.decode(seq.output)
        hits = [i for i in (text.find(s) for s in seq.request.sampling.stop) if i >= 0]
        if not hits:
            return None
        seq.finish_reason = "stop"
        return text[: min(hits)]

    def _finish(self, seq: Sequence, text: str | None) -> None:
        self.scheduler.release(seq.slot)
        if text is None and self.tokenizer is not None:
            text = self.tokenizer.decode(seq.output)
        r = seq.request
        self.ready.append(Completion(r.request_id, list(seq.output), text, seq.finish_reason,
                                     len(r.prompt_ids), len(seq.output)))
