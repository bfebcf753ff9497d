"""Host-side timing of the engine's steps: what running sequences wait between tokens, and what one
admitted request costs to prefill.

- `gap(now)`: the time since the previous decode step while sequences were running; a prefill between two
  decode steps shows up here as one long gap (the stall users of the online endpoint feel). Kept for the
  last `window` decode steps; `gaps_ms()` gives (p50, p99, max) in ms.
- `prefill_cost_s`: an exponential average of prefill seconds per admitted request (vision included), which
  the engine uses to size admissions under `EngineConfig.max_decode_stall_ms`.

Times are host wall-clock: each step ends in a host sync (sampled tokens go to `.tolist()`), so they cover
the GPU work of the step.
"""

from __future__ import annotations

import time
from collections import deque


class StepTimer:
    def __init__(self, window: int = 4096, smoothing: float = 0.3, clock=time.perf_counter):
        self.clock, self.smoothing = clock, smoothing
        self.gaps: deque[float] = deque(maxlen=window)
        self.last_decode: float | None = None
        self.prefill_cost_s: float | None = None

    def decode_started(self, running_before: bool) -> None:
        now = self.clock()
        if running_before and self.last_decode is not None:
            self.gaps.append(now - self.last_decode)
        self.last_decode = now

    def idle(self) -> None:
        """Nothing is running: the next decode step starts a new series (no gap across idle time)."""
        self.last_decode = None

    def prefill_done(self, requests: int, seconds: float) -> None:
        per = seconds / max(requests, 1)
        a = self.smoothing
        self.prefill_cost_s = per if self.prefill_cost_s is None else (1 - a) * self.prefill_cost_s + a * per

    def admission_limit(self, budget_ms: float | None, running: bool) -> int | None:
        """How many requests one admission may take so that it stalls running sequences <= budget_ms."""
        if budget_ms is None or not running or self.prefill_cost_s is None:
            return None
        return max(1, int(budget_ms / 1e3 / self.prefill_cost_s))

    def gaps_ms(self) -> tuple[float, float, float] | None:
        if not self.gaps:
            return None
        xs = sorted(self.gaps)

        def pick(q: float) -> float:
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3

        return pick(0.5), pick(0.99), xs[-1] * 1e3
