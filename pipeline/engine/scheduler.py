"""Slot allocation and admission for continuous batching.

Slots are handed out lowest-first so live sequences stay packed at the bottom of the cache and the
decode batch (slots [0, highest live slot]) stays small. Admission takes waiting requests in arrival
order while the batch fits `max_prefill_tokens` and `max_prefill_requests` (or the caller's smaller `limit`);
a request alone above the token budget is still admitted by itself (it has already passed the engine's size
check).
"""

from __future__ import annotations

import heapq
from collections import deque

from pipeline.engine.request import Request, Sequence


class Scheduler:
    def __init__(self, num_slots: int, max_prefill_tokens: int, max_prefill_requests: int):
        self.free = list(range(num_slots))
        heapq.heapify(self.free)
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Sequence] = {}
        self.max_prefill_tokens, self.max_prefill_requests = max_prefill_tokens, max_prefill_requests

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def next_admission(self, limit: int | None = None) -> list[tuple[Request, int]]:
        batch, tokens = [], 0
        most = self.max_prefill_requests if limit is None else max(1, min(limit, self.max_prefill_requests))
        while self.waiting and self.free and len(batch) < most:
            n = len(self.waiting[0].prompt_ids)
            if batch and tokens + n > self.max_prefill_tokens:
                break
            batch.append((self.waiting.popleft(), heapq.heappop(self.free)))
            tokens += n
        return batch

    def start(self, seq: Sequence) -> None:
        self.running[seq.slot] = seq

    def release(self, slot: int) -> None:
        self.running.pop(slot, None)
        heapq.heappush(self.free, slot)

    @property
    def decode_width(self) -> int:
        return max(self.running) + 1 if self.running else 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
