"""Staged admission: a waiting group's images are encoded a few per engine step, between decode steps, and
the group is then admitted in one cheap step, so running sequences never wait for a whole group's vision
tower at once and the admission's fixed cost is still paid once per group.

Why: an Mllama admission costs a fixed ~25 ms plus ~39 ms per one-tile request on an H200, nearly all of it
the vision tower (BENCHMARKS.md). Under a decode-stall budget (`EngineConfig.max_decode_stall_ms`) an
unstaged engine can only admit 2-3 requests per step, paying the fixed cost for every few requests; without a
budget a 16-request group stalls decoding for ~0.85 s. Staging takes the vision work out of the admission.

Contract (`VisionStaging`, used by `Engine._admit` when `EngineConfig.stage_vision_images` > 0 and the
runner has `encode(media)` and `media_images(media)` — the Mllama runner; refused otherwise, tensor
parallelism included):
- Only while sequences are running; an idle engine admits directly (nobody waits on a decode step).
- `advance(limit, vision_budget_s)` per step: with no group, take the next admission group from the scheduler
  (its slots are held from now on: the scheduler has handed them out) — a group without images is returned
  at once; otherwise encode the next requests of the group (at least one), or, once every request is
  encoded, return the group with its states for `runner.prefill(..., encoded=...)`.
- A slice holds at most `images_per_step` images, and with `vision_budget_s` (the engine passes its decode-
  stall budget, as it does for admissions: the gap running sequences see is the stall plus one decode step)
  only as many as the measured encode time fits: each
  encode is timed to completion (`sync`: the device's synchronize), and the next request is encoded only if
  the slice so far plus its images at the recent worst seconds per image stays within the budget (the sync
  costs the overlap of the next decode step's host work with the tower's tail, ~0.3 ms). A fixed
  count cannot keep a stall budget: four one-tile Mllama-11B images are ~150 ms of vision on an H200, and at
  4 per step the endpoint's p99 gap between tokens was 177 ms under a 150 ms budget (BENCHMARKS.md session
  14).
- A request whose images fail to encode completes alone with an `engine_error` and frees its slot; the rest
  of the group goes on. `drop` takes requests out of a group (the endpoint's cancelled streams).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pipeline.engine.request import Completion, Request
from pipeline.engine.scheduler import Scheduler

log = logging.getLogger(__name__)


def can_stage(arch: str, tp: int) -> bool:
    """Whether an engine for `arch` at `tp` GPUs has a runner with `encode` (the CLIs refuse early otherwise)."""
    return arch == "MllamaForConditionalGeneration" and tp == 1


class VisionStaging:
    def __init__(self, runner: Any, scheduler: Scheduler, images_per_step: int,
                 sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                 recent: int = 8):
        if not (hasattr(runner, "encode") and hasattr(runner, "media_images")):
            raise ValueError(f"stage_vision_images needs a runner that encodes media apart from prefill; "
                             f"{type(runner).__name__} does not (Mllama on one GPU does)")
        self.runner, self.scheduler, self.images_per_step = runner, scheduler, images_per_step
        self.sync, self.clock = sync, clock
        self.image_seconds: deque[float] = deque(maxlen=recent)  # per image, of the recent timed encodes
        self.group: list[tuple[Request, int]] = []
        self.encoded: list[Any] = []
        self.failed: list[Completion] = []  # collected by the engine after each advance

    @property
    def busy(self) -> bool:
        return bool(self.group)

    def drop(self, unwanted: Callable[[Request], bool]) -> list[Request]:
        """Take the group's `unwanted` requests (e.g. cancelled by their clients) out and free their slots."""
        dropped = []
        for i in reversed(range(len(self.group))):
            request, slot = self.group[i]
            if unwanted(request):
                del self.group[i]
                if i < len(self.encoded):
                    del self.encoded[i]
                self.scheduler.release(slot)
                dropped.append(request)
        if not self.group:
            self.encoded = []
        return dropped[::-1]

    def fits(self, media: Any, spent: float, budget: float | None) -> bool:
        """Whether encoding `media` after `spent` seconds of this slice is expected to stay within `budget`."""
        if budget is None or not self.image_seconds:
            return True
        return spent + max(self.image_seconds) * self.runner.media_images(media) <= budget

    def advance(self, limit: int | None = None, vision_budget_s: float | None = None
                ) -> tuple[list[tuple[Request, int]], list[Any]] | None:
        """The group to admit now with its encoded states, or None (a slice was encoded, or nothing waits)."""
        if not self.group:
            batch = self.scheduler.next_admission(limit)
            if not batch or all(r.media is None for r, _ in batch):
                return (batch, [None] * len(batch)) if batch else None
            self.group, self.encoded = batch, []
            # fall through: the first slice is encoded in this step
        if len(self.encoded) == len(self.group):
            ready = self.group, self.encoded
            self.group, self.encoded = [], []
            return ready
        images, spent = 0, 0.0
        timed = vision_budget_s is not None
        while len(self.encoded) < len(self.group) and (images == 0 or images < self.images_per_step):
            request, slot = self.group[len(self.encoded)]
            if request.media is None:
                self.encoded.append(None)
                continue
            if images and not self.fits(request.media, spent, vision_budget_s):
                break
            t0 = self.clock()
            try:
                states = self.runner.encode(request.media)
                if timed and self.sync is not None:
                    self.sync()  # the encode's GPU time, not its launches (the step ends in a sync anyway)
            except Exception as exc:  # noqa: BLE001 - this request's media, not the group's
                log.warning("request %s failed to encode: %r", request.request_id, exc)
                self.failed.append(Completion.failed(request, f"engine_error: {type(exc).__name__}: {exc}"))
                self.scheduler.release(slot)
                del self.group[len(self.encoded)]
                continue
            self.encoded.append(states)
            n, seconds = states.shape[0], self.clock() - t0
            if timed and n:
                self.image_seconds.append(seconds / n)
            images, spent = images + n, spent + seconds
        if not self.group:  # every request failed
            self.encoded = []
        return None
