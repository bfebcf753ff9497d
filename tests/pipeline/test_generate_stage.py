"""The GPU stage's engine thread (pipeline/generate_stage.py `EngineThread`) against a mock engine: every
submitted request, from any of several concurrent callers, resolves its own future, and
the `[engine]` report line accounts the thread's time and the sequences it saw."""

from __future__ import annotations

import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from ops.sampling import SamplingParams
from pipeline.engine.request import Completion, Request
from pipeline.engine.step_timer import StepTimer
from pipeline.generate_stage import EngineThread


class MockEngine:
    """Each step admits every waiting request and finishes each running one after `steps_per_request`."""

    def __init__(self, steps_per_request: int = 3):
        self.scheduler = SimpleNamespace(waiting=deque(), running={})
        self.left: dict[str, int] = {}
        self.steps_per_request = steps_per_request
        self.stats = {"generated_tokens": 0}
        self.timer = StepTimer()  # the report line reads its token gaps

    def add(self, request: Request) -> None:
        self.scheduler.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    def step(self) -> list[Completion]:
        while self.scheduler.waiting:
            r = self.scheduler.waiting.popleft()
            self.scheduler.running[r.request_id] = r
            self.left[r.request_id] = self.steps_per_request
        done = []
        for rid in list(self.scheduler.running):
            self.left[rid] -= 1
            self.stats["generated_tokens"] += 1
            if self.left[rid] == 0:
                r = self.scheduler.running.pop(rid)
                done.append(Completion(rid, [1] * self.steps_per_request, f"text {rid}", "length",
                                       len(r.prompt_ids), self.steps_per_request))
        return done


def test_each_caller_gets_its_own_completions_and_report_lines(capsys):
    engine = MockEngine()
    thread = EngineThread(engine, report_s=0.0)  # a report line after every loop turn
    params = SamplingParams(max_new_tokens=3)

    def caller(k: int) -> list[str]:
        futures = [thread.submit(Request(f"c{k}-{i}", [1, 2, 3], None, params)) for i in range(5)]
        return [f.result(timeout=30).text for f in futures]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(caller, range(4)))
    thread.stop()
    assert results == [[f"text c{k}-{i}" for i in range(5)] for k in range(4)]
    assert engine.stats["generated_tokens"] == 4 * 5 * 3
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[engine]")]
    assert lines, "no [engine] report line"
    busy = [line for line in lines if " 0 steps" not in line]
    m = re.search(r"busy (\d+)%, idle (\d+)%, (\d+) steps of [\d.]+ ms, running ([\d.]+), waiting ([\d.]+), "
                  r"(\d+) tokens/s", busy[0])
    assert m and int(m.group(3)) >= 1 and float(m.group(4)) >= 0


def test_a_cancelled_future_does_not_end_the_engine_thread():
    """An online caller that gives up cancels its Future; the engine thread (which ends the process when it
    dies) must finish that request quietly and keep serving the others."""
    engine = MockEngine(steps_per_request=2)
    thread = EngineThread(engine, report_s=1e9)
    params = SamplingParams(max_new_tokens=2)
    gone = thread.submit(Request("gone", [1], None, params))
    assert gone.cancel()
    kept = thread.submit(Request("kept", [1], None, params))
    assert kept.result(timeout=30).text == "text kept"
    later = thread.submit(Request("later", [1], None, params))
    assert later.result(timeout=30).text == "text later"
    assert thread.thread.is_alive()
    thread.stop()


def test_a_failing_report_line_does_not_end_the_engine_thread(caplog):
    engine = MockEngine()
    del engine.timer  # the report cannot read token gaps: logged, and the engine goes on
    thread = EngineThread(engine, report_s=0.0)
    done = thread.submit(Request("r", [1, 2, 3], None, SamplingParams(max_new_tokens=3))).result(timeout=30)
    thread.stop()
    assert done.text == "text r"
    assert "engine report failed" in caplog.text
