"""`EngineConfig.max_decode_stall_ms` with a mock runner on a simulated clock (pipeline/engine/step_timer.py):
admissions shrink so running sequences never wait much longer than the budget for their next token, the
engine still admits at least one request per step, and every request completes with all its tokens."""

import pytest
import torch

from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.engine.request import Request
from pipeline.engine.step_timer import StepTimer

VOCAB = 8


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class MockRunner:
    """A model whose prefill costs `prefill_s` per request and whose decode step costs `decode_s`."""

    def __init__(self, clock: Clock, slots: int = 64, prefill_s: float = 0.05, decode_s: float = 0.02):
        self.clock, self.prefill_s, self.decode_s = clock, prefill_s, decode_s
        self.num_slots, self.max_len, self.device = slots, 256, torch.device("cpu")
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)
        self.prefill_sizes: list[int] = []

    def check(self, prompt_ids, media):
        return None

    def prefill(self, prompts, media, slots):
        self.clock.t += self.prefill_s * len(prompts)
        self.prefill_sizes.append(len(prompts))
        return torch.nn.functional.one_hot(torch.full((len(prompts),), 3), VOCAB).float()

    def decode(self, batch):
        self.clock.t += self.decode_s
        return torch.nn.functional.one_hot(torch.full((batch,), 3), VOCAB).float()


def run(stall_ms, n=96, new_tokens=12):
    clock = Clock()
    runner = MockRunner(clock)
    cfg = EngineConfig(max_num_seqs=64, max_prefill_requests=16, cuda_graphs=False, max_decode_stall_ms=stall_ms)
    engine = Engine(runner, None, cfg, ())
    engine.timer = StepTimer(clock=clock)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    done = list(engine.generate(Request(str(i), [1, 2, 3], None, params) for i in range(n)))
    assert sorted(int(c.request_id) for c in done) == list(range(n))
    assert all(c.num_generated_tokens == new_tokens and c.error is None for c in done)
    return runner, engine.timer.gaps_ms()


def test_without_a_budget_groups_stall_decoding():
    runner, (p50, p99, worst) = run(None)
    assert max(runner.prefill_sizes) == 16
    assert worst >= 16 * 50  # a full group of 16 x 50 ms between two tokens


def test_budget_bounds_the_gap_between_tokens():
    runner, (p50, p99, worst) = run(120.0)
    assert runner.prefill_sizes[0] == 16  # nothing running yet: a full group, and the cost is measured
    assert max(runner.prefill_sizes[1:]) == 2  # 120 ms / 50 ms per request
    assert worst <= 120 + 20 + 1e-6  # the admission plus the decode step itself


def test_at_least_one_request_per_step_when_one_costs_more_than_the_budget():
    runner, (_, _, worst) = run(10.0, n=20)
    assert set(runner.prefill_sizes[1:]) == {1}
    assert worst == pytest.approx(50 + 20)


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_decode_stall_ms"):
        EngineConfig(max_decode_stall_ms=0)
