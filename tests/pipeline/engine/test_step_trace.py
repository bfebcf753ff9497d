"""pipeline/engine/step_trace.py: the engine writes one line per step with what it admitted and decoded and
how long each took (a mock runner on a simulated clock, so every cost is known), and the summary reads the
admission and decode costs, the decode gaps and the wall clock's split back out of them."""

import json

from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.engine.request import Request
from pipeline.engine.step_timer import StepTimer
from pipeline.engine.step_trace import main, summarize
from tests.pipeline.engine.test_decode_stall import Clock, MockRunner


def test_each_step_is_traced_with_its_costs(tmp_path, capsys):
    clock = Clock()
    runner = MockRunner(clock, slots=16, prefill_s=0.05, decode_s=0.02, fixed_s=0.01)
    cfg = EngineConfig(max_num_seqs=16, max_prefill_requests=8, cuda_graphs=False, step_trace=str(tmp_path))
    engine = Engine(runner, None, cfg, ())
    engine.timer = StepTimer(clock=clock)
    requests = [Request(str(i), [1, 2, 3], None, SamplingParams(max_new_tokens=4, ignore_eos=True))
                for i in range(20)]
    done = list(engine.generate(requests))
    assert len(done) == 20

    (path,) = tmp_path.glob("steps-*.jsonl")  # flushed when the engine went idle
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sum(s["admit"] for s in lines) == 20
    assert [s["admit"] for s in lines if s["admit"]] == runner.prefill_sizes
    for s in lines:  # the mock's costs, to the microsecond
        assert abs(s["prefill_ms"] - (10 + 50 * s["admit"] if s["admit"] else 0)) < 1e-3
        assert abs(s["decode_ms"] - (20 if s["width"] else 0)) < 1e-3
    assert lines[0]["t"] == 0 and lines[-1]["running"] == 0

    summary = summarize(lines)
    assert summary["admissions"][8] == {"count": 2, "p50_ms": 410.0}
    assert summary["steps"] == len(lines)
    assert abs(sum(summary["share"].values()) - 1) < 0.01 and summary["share"]["neither"] < 0.01
    assert summary["gap_ms"]["p50"] == 20.0 and summary["gap_ms"]["max"] >= 410.0  # a prefill between decodes

    main([str(path)])
    assert json.loads(capsys.readouterr().out.split(": ", 1)[1])["steps"] == len(lines)
