"""A job never hangs forever: iterate the output stream with a stall timeout.

Some failures make Ray Data wait forever without an error (RELIABILITY.md): e.g. a GPU actor whose
process dies while it is being constructed (a driver segfault, the OOM killer while loading weights) is
restarted again and again and the job never fails. `iterate_with_stall_timeout` pulls the stream on a
helper thread and raises `JobStalledError` in the caller when no item arrives for `stall_s` seconds, so
the job exits with a clear message in bounded time. Rows already received are the caller's to commit.
A `watch` (pipeline/cluster_watch.py) is polled while items are late: it may fail the job sooner (a lost
node whose actors cannot be placed again) and words the stall message from what it sees.
`exit_process` is the jobs' way out: a stream left mid-way (Ctrl-C, a stall) ends the process at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import NoReturn, TypeVar

T = TypeVar("T")
_DONE = object()


class JobStalledError(RuntimeError):
    """No output for longer than the stall timeout."""


POLL_S = 5.0
PUMP_THREAD = "stream-pump"


def iterate_with_stall_timeout(items: Iterable[T], stall_s: float, what: str = "output",
                               watch=None) -> Iterator[T]:
    if (not stall_s or stall_s <= 0) and watch is None:
        yield from items
        return
    stall_s = stall_s if stall_s and stall_s > 0 else float("inf")
    box: queue.Queue = queue.Queue(maxsize=1)

    def pump() -> None:
        try:
            for item in items:
                box.put(item)
            box.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box.put(exc)

    # A daemon: after a stall it may stay blocked inside Ray until the process exits.
    threading.Thread(target=pump, name=PUMP_THREAD, daemon=True).start()
    last = time.monotonic()
    while True:
        idle = time.monotonic() - last
        poll = stall_s - idle if watch is None else min(stall_s - idle, POLL_S, getattr(watch, "loss_stall_s", POLL_S))
        try:
            item = box.get(timeout=max(0.01, poll))
        except queue.Empty:
            idle = time.monotonic() - last
            early = watch.check(idle) if watch is not None else None
            if early:
                raise JobStalledError(early) from None
            if idle < stall_s:
                continue
            if watch is not None:
                raise JobStalledError(watch.explain(stall_s)) from None
            raise JobStalledError(
                f"no {what} for {stall_s:.0f} s: the job is stuck (a GPU actor that keeps dying while it starts, "
                "e.g. killed for memory while loading weights, looks like this; see the Ray logs: `ray logs` or "
                "the dashboard). Rows written so far are kept; re-running the same command resumes.") from None
        last = time.monotonic()
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def exit_process(status: int) -> NoReturn:
    """A job script's exit. A stream left mid-way (Ctrl-C, a stall) leaves its pump and Ray Data's executor
    threads running inside Ray, and interpreter shutdown under them can crash the process (seen in CI: a
    SIGSEGV from an interrupted caption job instead of its exit status 130, after its rows were committed).
    Then the process ends at once, after flushing what it printed; a local Ray cluster goes with it (its
    processes share the driver's fate) and a remote one sees the driver leave. Otherwise a normal exit."""
    if any(t.name == PUMP_THREAD and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
    sys.exit(status)
