"""Per-token streaming and cancellation for an engine shared by all in-flight HTTP requests of a replica.

The batch job's `EngineThread` (pipeline/generate_stage.py) owns the engine loop and resolves one Future per
request when it completes; it is reused unchanged. `StreamingEngine` wraps the engine it drives and adds,
inside that same thread (so the engine is never touched from two threads):
- after every `step()`, each running `ServeRequest` with an `on_tokens` callback gets its new token ids
  (the first one right after its prefill: time to first token), called on the request's event loop: one
  `call_soon_threadsafe` per loop and step carries all of its requests' tokens (one per request cost the
  engine thread ~4 us each: ~1 ms a step at 256 streams, host time the GPU waits for);
- a `ServeRequest` whose `cancelled` flag is set (the client went away) is taken out of the waiting queue or
  its running slot is released at the start of the next step, and completes with
  `finish_reason="error", error="cancelled: ..."`, so its slot serves the next request.
`AsyncEngine` bridges to asyncio over a driver that runs the engine in a thread of this process
(`ThreadDriver`) or in a process of its own (pipeline/serve/engine_process.py): `submit` returns an awaitable
future, `stream` an async iterator of `("tokens", ids)` events ending with `("done", completion)`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pipeline.engine.request import Completion, Request
from pipeline.generate_stage import EngineThread

log = logging.getLogger(__name__)


@dataclass
class ServeRequest(Request):
    on_tokens: Callable[[list[int]], None] | None = None  # called on `loop` with each step's new token ids
    loop: asyncio.AbstractEventLoop | None = None  # the event loop that reads this request's stream
    cancelled: bool = False  # set from any thread; a plain bool store is atomic in CPython
    published: int = field(default=0, repr=False)  # output tokens already handed to on_tokens


class StreamingEngine:
    """Duck-types the engine for `EngineThread` (add / step / has_work / scheduler / stats)."""

    def __init__(self, engine: Any, hand_off: Callable[[list[tuple[ServeRequest, list[int]]]], None] | None = None):
        self.engine = engine
        # None: each request's new tokens go to its own event loop (`ServeRequest.loop`); else every
        # ServeRequest's go to `hand_off` (the engine process sends them to the replica).
        self.hand_off = hand_off
        self.cancels = 0  # bumped on every cancel (`note_cancel`); the step scans only when it changed
        self._cancel_lock = threading.Lock()
        self._seen_cancels = 0
        self._ready: list[Completion] = []

    @property
    def scheduler(self) -> Any:
        return self.engine.scheduler

    @property
    def stats(self) -> dict:
        return self.engine.stats

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def timer(self) -> Any:  # the [engine] report's token gaps
        return self.engine.timer

    def add(self, request: Request) -> None:
        if getattr(request, "cancelled", False):  # cancelled while still in the thread's inbox
            self._ready.append(Completion.failed(request, "cancelled: the client went away"))
            return
        self.engine.add(request)

    def has_work(self) -> bool:
        return bool(self._ready) or self.engine.has_work()

    def note_cancel(self) -> None:
        """After setting a request's `cancelled` flag (from any thread): the next step looks for it."""
        with self._cancel_lock:
            self.cancels += 1

    def running_count(self) -> int:
        return len(self.engine.scheduler.running)

    def step(self) -> list[Completion]:
        done, self._ready = self._ready, []
        if self.cancels != self._seen_cancels:
            self._seen_cancels = self.cancels
            done.extend(self._drop_cancelled())
        if self.engine.has_work():
            done.extend(self.engine.step())
        fresh = []
        for seq in self.engine.scheduler.running.values():
            r = seq.request
            if (isinstance(r, ServeRequest) and (r.loop is not None or self.hand_off is not None)
                    and len(seq.output) > r.published):
                fresh.append((r, seq.output[r.published:]))
                r.published = len(seq.output)
        if fresh and self.hand_off is not None:
            self.hand_off(fresh)
        elif fresh:
            unread = to_event_loops(fresh)
            for r in unread:  # nobody reads these streams any more; the engine goes on
                r.cancelled = True
                self.note_cancel()
        return done

    def _drop_cancelled(self) -> list[Completion]:
        sched = self.engine.scheduler
        out = []
        for r in [r for r in sched.waiting if getattr(r, "cancelled", False)]:
            sched.waiting.remove(r)
            out.append(Completion.failed(r, "cancelled: the client went away"))
        staging = getattr(self.engine, "staging", None)  # requests whose images are being encoded
        for r in staging.drop(lambda r: getattr(r, "cancelled", False)) if staging is not None else ():
            out.append(Completion.failed(r, "cancelled: the client went away"))
        for slot, seq in list(sched.running.items()):
            if getattr(seq.request, "cancelled", False):
                sched.release(slot)  # what the engine does when a sequence finishes
                out.append(Completion(seq.request.request_id, list(seq.output), None, "error",
                                      len(seq.request.prompt_ids), len(seq.output), "cancelled: the client went away"))
        return out


class ThreadDriver:
    """The engine in a thread of this process (`EngineThread` over a `StreamingEngine`)."""

    def __init__(self, engine: Any, report_s: float = 60.0):
        self.streaming = StreamingEngine(engine)
        self.thread = EngineThread(self.streaming, report_s)

    @property
    def tokenizer(self) -> Any:
        return self.streaming.tokenizer

    @property
    def stats(self) -> dict:
        return self.streaming.stats

    def slots(self) -> int:
        return len(self.streaming.scheduler.free) + self.running_count()

    def running_count(self) -> int:
        return self.streaming.running_count()

    def alive(self) -> bool:
        return self.thread.thread.is_alive()

    def submit(self, request: ServeRequest) -> Future:
        return self.thread.submit(request)

    def cancel(self, request: ServeRequest) -> None:
        request.cancelled = True
        self.streaming.note_cancel()

    def stop(self) -> None:
        self.thread.stop()


class AsyncEngine:
    """The replica's engine, shared by every request of the event loop that calls it, behind a driver:
    `ThreadDriver` (a thread of this process) or `pipeline.serve.engine_process.ProcessDriver` (a process of
    its own). A driver has `tokenizer`, `stats`, `slots()`, `running_count()`, `alive()`, `submit(request) ->
    concurrent Future`, `cancel(request)` and `stop()`, and hands tokens to `request.loop` as they come."""

    def __init__(self, driver: Any):
        self.driver = driver

    @classmethod
    def in_thread(cls, engine: Any, report_s: float = 60.0) -> AsyncEngine:
        return cls(ThreadDriver(engine, report_s))

    @property
    def tokenizer(self) -> Any:
        return self.driver.tokenizer

    @property
    def stats(self) -> dict:
        return self.driver.stats

    def slots(self) -> int:
        return self.driver.slots()

    def running_count(self) -> int:
        return self.driver.running_count()

    def alive(self) -> bool:
        return self.driver.alive()

    def cancel(self, request: ServeRequest) -> None:
        self.driver.cancel(request)

    def stop(self) -> None:
        self.driver.stop()

    async def submit(self, request: ServeRequest) -> Completion:
        # Not `asyncio.wrap_future`: cancelling the awaiting task would cancel the thread's Future, and the
        # engine thread's `set_result` on a cancelled Future raises, which ends the process (EngineThread).
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()

        def resolve(f) -> None:
            if not result.done():
                result.set_result(f.result())

        self.driver.submit(request).add_done_callback(lambda f: loop.call_soon_threadsafe(resolve, f))
        return await result

    async def stream(self, requests: list[ServeRequest]) -> AsyncIterator[tuple[int, str, Any]]:
        """Run `requests` (the choices of one HTTP request); yield `(choice, "tokens", ids)` as tokens are
        generated and `(choice, "done", completion)` once per choice. Closing the iterator early (the client
        disconnected) cancels the choices still running."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for i, r in enumerate(requests):
            r.loop, r.on_tokens = loop, lambda ids, i=i: queue.put_nowait((i, "tokens", ids))
        pending = set(range(len(requests)))
        try:
            for i, r in enumerate(requests):
                fut = self.driver.submit(r)
                # Resolved after the step that published the last tokens: the queue keeps that order.
                fut.add_done_callback(lambda f, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, "done", f)))
            while pending:
                events = [await queue.get()]
                while not queue.empty():  # a consumer slower than the engine gets several steps' tokens at once
                    events.append(queue.get_nowait())
                for i, kind, value in _merged(events):
                    if kind == "done":
                        pending.discard(i)
                        value = value.result()
                    yield i, kind, value
        finally:
            for i in pending:
                self.cancel(requests[i])


def to_event_loops(fresh: list[tuple[ServeRequest, list[int]]]) -> list[ServeRequest]:
    """Hand new tokens to their requests' event loops, one `call_soon_threadsafe` per loop; returns the
    requests whose loop is closed."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[ServeRequest, list[int]]]] = {}
    for r, ids in fresh:
        if r.loop is not None:
            by_loop.setdefault(r.loop, []).append((r, ids))
    unread = []
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # "Event loop is closed"
            unread += [r for r, _ in batch]
    return unread


def _deliver(batch: list[tuple[ServeRequest, list[int]]]) -> None:
    """On the event loop: one engine step's new tokens for each of its streams."""
    for r, ids in batch:
        try:
            r.on_tokens(ids)
        except Exception:  # noqa: BLE001 - one broken stream must not keep the others' tokens from them
            log.exception("token delivery failed for request %s", r.request_id)


def _merged(events: list[tuple[int, str, Any]]) -> list[tuple[int, str, Any]]:
    """Consecutive "tokens" events of one choice as one (fewer SSE chunks when the client side lags)."""
    out: list[tuple[int, str, Any]] = []
    for i, kind, value in events:
        if kind == "tokens" and out and out[-1][0] == i and out[-1][1] == "tokens":
            out[-1] = (i, kind, out[-1][2] + value)
        else:
            out.append((i, kind, value))
    return out
