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
    """A model whose prefill costs `fixed_s + prefill_s` per request and whose decode step costs `decode_s`."""

    def __init__(self, clock: Clock, slots: int = 64, prefill_s: float = 0.05, decode_s: float = 0.02,
                 fixed_s: float = 0.0, cold_s: float = 0.0):
        self.clock, self.prefill_s, self.decode_s, self.fixed_s = clock, prefill_s, decode_s, fixed_s
        self.cold_s = cold_s  # added to the first prefill only (lazy initialisation, new kernel plans)
        self.num_slots, self.max_len, self.device = slots, 256, torch.device("cpu")
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)
        self.prefill_sizes: list[int] = []

    def check(self, prompt_ids, media):
        return None

    def prefill(self, prompts, media, slots):
        self.clock.t += self.fixed_s + self.prefill_s * len(prompts) + (0 if self.prefill_sizes else self.cold_s)
        self.prefill_sizes.append(len(prompts))
        return torch.nn.functional.one_hot(torch.full((len(prompts),), 3), VOCAB).float()

    def decode(self, batch):
        self.clock.t += self.decode_s
        return torch.nn.functional.one_hot(torch.full((batch,), 3), VOCAB).float()


def run(stall_ms, n=96, new_tokens=12, slots=64, spread=1, **costs):
    """`n` requests of `new_tokens` .. `new_tokens + spread - 1` tokens (staggered finishes)."""
    clock = Clock()
    runner = MockRunner(clock, slots=slots, **costs)
    cfg = EngineConfig(max_num_seqs=slots, max_prefill_requests=16, cuda_graphs=False, max_decode_stall_ms=stall_ms)
    engine = Engine(runner, None, cfg, ())
    engine.timer = StepTimer(clock=clock)
    want = {str(i): new_tokens + i % spread for i in range(n)}
    done = list(engine.generate(Request(i, [1, 2, 3], None, SamplingParams(max_new_tokens=t, ignore_eos=True))
                                for i, t in want.items()))
    assert sorted(int(c.request_id) for c in done) == list(range(n))
    assert all(c.num_generated_tokens == want[c.request_id] and c.error is None for c in done)
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


def test_the_fixed_cost_of_a_prefill_step_is_charged_once_not_per_request():
    # 100 ms per admission + 10 ms per request: 150 ms fit 5 requests. Charging the one-request cost (110 ms)
    # to each request would admit one at a time; the per-request average of the first group would admit 9.
    runner, (_, _, worst) = run(150.0, n=200, new_tokens=24, prefill_s=0.01, fixed_s=0.1)
    assert runner.prefill_sizes[:2] == [16, 1]  # the first group costs more than the budget: probe with one
    assert max(runner.prefill_sizes[2:]) == 5
    assert worst <= 150 + 20 + 1e-6


def test_a_full_engine_gathers_freed_slots_into_one_admission():
    # 32 slots, sequences finishing about one per step: admitting each freed slot alone pays the 100 ms fixed
    # cost per request (what happens without a budget); gathering for at most the budget admits up to the 5
    # that fit 150 ms at once.
    work = dict(n=200, new_tokens=24, slots=32, spread=17, prefill_s=0.01, fixed_s=0.1)
    alone, _ = run(None, **work)
    runner, (_, _, worst) = run(150.0, **work)
    later = runner.prefill_sizes[2:-2]  # past the first group and the probe; the tail runs out of requests
    assert sum(alone.prefill_sizes[2:]) / len(alone.prefill_sizes[2:]) < 2
    assert min(later) >= 3 and sum(later) / len(later) >= 4
    assert runner.clock.t < 0.7 * alone.clock.t  # the same requests and tokens in under 70% of the time
    assert worst <= 150 + 20 + 1e-6


def test_a_slow_first_admission_ages_out_of_the_cost_model():
    # The first admission takes 5 s more (as the first Mllama-11B one does on an H200); once it has left the
    # model's window, admissions grow to the 5 requests that fit 150 ms.
    runner, _ = run(150.0, n=300, new_tokens=24, slots=32, spread=17, prefill_s=0.01, fixed_s=0.1, cold_s=5.0)
    steady = runner.prefill_sizes[20:-2]
    assert sum(size == 5 for size in steady) >= 0.8 * len(steady)


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_decode_stall_ms"):
        EngineConfig(max_decode_stall_ms=0)
