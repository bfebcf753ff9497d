"""scripts/engine_host_cost.py: every step it times is one decode step of `width` running sequences (a request
the engine refused would make the steps idle and the timing meaningless), streamed or not."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.conftest import load_script


@pytest.mark.parametrize("streaming", [False, True])
def test_timed_steps_decode_every_sequence(streaming):
    script = load_script("engine_host_cost")
    loop = None
    if streaming:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        engine = script.running_engine(3, 10, loop)
        stats = engine.stats
        before = (stats["decode_steps"], stats["generated_tokens"])
        for _ in range(10):
            engine.step()
        assert (stats["decode_steps"] - before[0], stats["generated_tokens"] - before[1]) == (10, 30)
        assert len(engine.scheduler.running) == 3
    finally:
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
