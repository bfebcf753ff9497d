"""A job never hangs forever: iterate the output stream with a stall timeout.

Some failures make Ray Data wait forever without an error (RELIABILITY.md): e.g. a GPU actor whose
process dies while it is being constructed (a driver segfault, the OOM killer while loading weights) is
restarted again and again and the job never fails. `iterate_with_stall_timeout` pulls the stream on a
helper thread and raises `JobStalledError` in the caller when no item arrives for `stall_s` seconds, so
the job exits with a clear message in bounded time. Rows already received are the caller's to commit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class JobStalledError(RuntimeError):
    """No output for longer than the stall timeout."""


def iterate_with_stall_timeout(items: Iterable[T], stall_s: float, what: str = "output") -> Iterator[T]:
    if not stall_s or stall_s <= 0:
        yield from items
        return
    box: queue.Queue = queue.Queue(maxsize=1)

    def pump() -> None:
        try:
            for item in items:
                box.put(item)
            box.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box.put(exc)

    # A daemon: after a stall it may stay blocked inside Ray until the process exits.
    threading.Thread(target=pump, name="stream-pump", daemon=True).start()
    while True:
        try:
            item = box.get(timeout=stall_s)
        except queue.Empty:
            raise JobStalledError(
                f"no {what} for {stall_s:.0f} s: the job is stuck (a GPU actor that keeps dying while it starts, "
                "e.g. killed for memory while loading weights, looks like this; see the Ray logs: `ray logs` or "
                "the dashboard). Rows written so far are kept; re-running the same command resumes.") from None
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
