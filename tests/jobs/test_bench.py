"""jobs/bench.py's arrivals run on a mock runner and a simulated clock: every request completes, and the gaps
of the steady state (many running) are told apart from the ramp's."""

from jobs.bench import arrivals_run
from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.engine.request import Request
from tests.pipeline.engine.test_decode_stall import Clock, MockRunner


def test_arrivals_report_the_steady_state_apart():
    clock = Clock()
    runner = MockRunner(clock, slots=32, prefill_s=0.05, decode_s=0.02, fixed_s=0.02)
    engine = Engine(runner, None, EngineConfig(max_num_seqs=32, max_prefill_requests=8, cuda_graphs=False,
                                               max_decode_stall_ms=100.0), ())
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    requests = [Request(str(i), [1, 2, 3], None, params) for i in range(200)]

    def sleep(seconds):
        clock.t += seconds

    out = arrivals_run(engine, requests, rate=12.0, steady_running=20, clock=clock, sleep=sleep)
    assert out["requests"] == 200 and out["decode_steps"] > 40
    assert 20 <= out["running_max"] <= 32
    assert 0 < out["steady"]["decode_steps"] < out["decode_steps"] - 1  # the ramp up and the drain left out
    # the 100 ms budget, the step timer's occasional probe of one more request (50 ms), the decode step
    assert out["gap_max_ms"] <= 100 + 50 + 20 + 1e-6
