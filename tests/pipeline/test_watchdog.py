"""pipeline/watchdog.py: items and errors pass through; a stream that stops yielding raises in bounded time."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.watchdog import JobStalledError, iterate_with_stall_timeout


def test_items_and_errors_pass_through():
    assert list(iterate_with_stall_timeout(iter(range(5)), stall_s=10)) == [0, 1, 2, 3, 4]
    assert list(iterate_with_stall_timeout(iter(range(3)), stall_s=0)) == [0, 1, 2]  # 0: no watchdog

    def failing():
        yield 1
        raise KeyError("boom")

    it = iterate_with_stall_timeout(failing(), stall_s=10)
    assert next(it) == 1
    with pytest.raises(KeyError, match="boom"):
        next(it)


def test_a_stream_that_stops_yielding_raises_after_the_timeout():
    release = threading.Event()

    def stuck():
        yield "first"
        release.wait()  # never set while the consumer waits: a hung Ray job
        yield "never"

    it = iterate_with_stall_timeout(stuck(), stall_s=0.5, what="output row")
    assert next(it) == "first"
    t0 = time.monotonic()
    with pytest.raises(JobStalledError, match="no output row for 0 s|no output row for 1 s"):
        next(it)
    assert time.monotonic() - t0 < 30
    release.set()


def test_slow_but_steady_streams_are_not_stalls():
    def slow():
        for i in range(4):
            time.sleep(0.2)
            yield i

    assert list(iterate_with_stall_timeout(slow(), stall_s=2)) == [0, 1, 2, 3]
