"""Host-side timing of the engine's steps: what running sequences wait between tokens, and what one
admitted request costs to prefill.

- `gap(now)`: the time since the previous decode step while sequences were running; a prefill between two
  decode steps shows up here as one long gap (the stall users of the online endpoint feel). Kept for the
  last `window` decode steps; `gaps_ms()` gives (p50, p99, max) in ms.
- `prefill_cost()`: the seconds one admission of n requests takes (vision included), as `fixed + per * n`:
  a least-squares line through the last `recent` admissions (through the origin while they all had one
  size). The engine sizes admissions with it under `EngineConfig.max_decode_stall_ms`. A prefill step has a
  fixed part (launches, the layers' weights read once): charging it all to one request, as a per-request
  average of one-request prefills does, keeps the limit at 1 even when several requests would fit the
  budget. Only recent admissions count, so the slow first ones (lazy initialisation, new kernel plans: 5 s
  for the first Mllama-11B admission on an H200) age out; and after `recent` admissions of one size the
  limit tries one fewer (or two after ones), so the line keeps two sizes to go by.

Times are host wall-clock: each step ends in a host sync (sampled tokens go to `.tolist()`), so they cover
the GPU work of the step.
"""

from __future__ import annotations

import time
from collections import deque


class StepTimer:
    def __init__(self, window: int = 4096, recent: int = 16, clock=time.perf_counter):
        self.clock = clock
        self.gaps: deque[float] = deque(maxlen=window)
        self.last_decode: float | None = None
        self.prefills: deque[tuple[int, float]] = deque(maxlen=recent)  # (requests, seconds) per admission

    def decode_started(self, running_before: bool) -> None:
        now = self.clock()
        if running_before and self.last_decode is not None:
            self.gaps.append(now - self.last_decode)
        self.last_decode = now

    def idle(self) -> None:
        """Nothing is running: the next decode step starts a new series (no gap across idle time)."""
        self.last_decode = None

    def prefill_done(self, requests: int, seconds: float) -> None:
        self.prefills.append((max(requests, 1), seconds))

    def prefill_cost(self) -> tuple[float, float] | None:
        """(fixed, per-request) seconds of one admission, or None before the first."""
        if not self.prefills:
            return None
        fixed, per = line_fit([n for n, _ in self.prefills], [t for _, t in self.prefills])
        if per <= 0:  # noise on a flat cost: every size costs about the same, i.e. all fixed
            return sum(t for _, t in self.prefills) / len(self.prefills), 1e-6
        return max(0.0, fixed), per

    def admission_limit(self, budget_ms: float | None, running: bool) -> int | None:
        """How many requests one admission may take so that it stalls running sequences <= budget_ms."""
        cost = self.prefill_cost()
        if budget_ms is None or not running or cost is None:
            return None
        budget = budget_ms / 1e3
        sizes = {n for n, _ in self.prefills}
        if len(sizes) == 1:
            n, seconds = self.prefills[-1][0], max(t for _, t in self.prefills)
            if n > 1 and seconds > budget + 1e-9:
                # Smaller admissions may cost anything up to `seconds` (a fixed part we cannot see yet): admit
                # one, which also gives the line its second point.
                return 1
        fixed, per = cost
        limit = max(1, int((budget - fixed) / per + 1e-9))
        if sizes == {limit} and len(self.prefills) == self.prefills.maxlen:
            # All alike for a while: a second size for the line to go by. One fewer never overshoots; from
            # one, two may (by at most one request's cost, once per `recent` admissions).
            return limit - 1 if limit > 1 else 2
        return limit

    def gaps_ms(self) -> tuple[float, float, float] | None:
        if not self.gaps:
            return None
        xs = sorted(self.gaps)

        def pick(q: float) -> float:
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3

        return pick(0.5), pick(0.99), xs[-1] * 1e3


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; through the origin when all xs are equal."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my / mx
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope
