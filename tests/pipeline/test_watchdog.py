"""pipeline/watchdog.py: items and errors pass through; a stream that stops yielding raises in bounded time;
a job left mid-stream exits at once with its status."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

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


EXIT_SCRIPT = """
import atexit, itertools, sys
from pipeline.watchdog import exit_process, iterate_with_stall_timeout
atexit.register(lambda: print("finalized", flush=True))
if sys.argv[1] == "abandoned":
    next(iter(iterate_with_stall_timeout(itertools.count(), 60)))  # its pump goes on, blocked on a full queue
print("printed before the exit", end="")  # unflushed: exit_process must flush it
exit_process(130)
"""


@pytest.mark.parametrize("how", ["abandoned", "finished"])
def test_exit_process_skips_shutdown_only_while_a_stream_is_left_running(how):
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, how], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert out.returncode == 130, out.stderr
    assert out.stdout.startswith("printed before the exit")
    assert ("finalized" in out.stdout) == (how == "finished")  # atexit (interpreter shutdown) runs only then
