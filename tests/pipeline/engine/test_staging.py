"""pipeline/engine/staging.py on the tiny Mllama (CPU): with `stage_vision_images`, a waiting group's images are
encoded a few per step while others decode and the group is admitted afterwards, and every answer is exactly
the unstaged engine's; a request whose images fail to encode fails alone; a runner that cannot stage is
refused."""

from __future__ import annotations

import random

import pytest

from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from tests.pipeline.engine.test_engine_mllama import make_engine, random_request, run_all


def spy_encode(engine: Engine) -> list[int]:
    """Record the decode width at each `runner.encode` call (0: nothing was running)."""
    widths: list[int] = []
    encode = engine.runner.encode

    def spied(media):
        widths.append(engine.scheduler.decode_width)
        return encode(media)

    engine.runner.encode = spied
    return widths


@pytest.mark.parametrize("images_per_step", [1, 3])
def test_staged_answers_equal_unstaged(our_tiny_mllama, images_per_step):
    rng = random.Random(11)
    requests = [random_request(i, rng, rng.randint(2, 12), ignore_eos=True) for i in range(24)]
    want = run_all(make_engine(our_tiny_mllama, slots=6, max_prefill_requests=4), requests)
    engine = make_engine(our_tiny_mllama, slots=6, max_prefill_requests=4, stage_vision_images=images_per_step)
    widths = spy_encode(engine)
    assert run_all(engine, requests) == want
    with_images = sum(r.media is not None for r in requests)
    assert 0 < len(widths) < with_images  # the first group is admitted directly, later ones are staged ...
    assert all(w > 0 for w in widths)  # ... only while sequences decode
    assert not engine.staging.busy and not engine.has_work()


@pytest.mark.parametrize("encode_s,fewest,most", [(0.04, 2, 2), (0.001, 3, 4)])
def test_slices_fit_the_stall_budget(our_tiny_mllama, encode_s, fewest, most):
    """Under max_decode_stall_ms a slice holds only as many images as the measured encode time fits (at 40 ms
    an image, 2 in 100 ms), at most stage_vision_images (4; at 1 ms an image the groups, not the budget,
    bound the slices); answers stay the unstaged engine's."""
    rng = random.Random(14)
    requests = [random_request(i, rng, 40 if i == 0 else rng.randint(2, 8), ignore_eos=True) for i in range(24)]
    want = run_all(make_engine(our_tiny_mllama, slots=10, max_prefill_requests=8), requests)
    engine = make_engine(our_tiny_mllama, slots=10, max_prefill_requests=8, stage_vision_images=4,
                         max_decode_stall_ms=100)
    now = [0.0]  # a clock that only encodes advance: decode steps take no time here
    engine.timer.clock = engine.staging.clock = lambda: now[0]
    encode, steps = engine.runner.encode, []

    def slow_encode(media):
        steps.append(engine.stats["decode_steps"])  # encodes of one slice see the same count
        now[0] += encode_s * engine.runner.media_images(media)
        return encode(media)

    engine.runner.encode = slow_encode
    assert run_all(engine, requests) == want
    per_slice = [steps.count(s) for s in set(steps)]
    assert fewest <= max(per_slice) <= most, per_slice


def test_a_request_that_fails_to_encode_fails_alone(our_tiny_mllama):
    rng = random.Random(12)
    # the first request decodes throughout, so every group after the first (direct) admission is staged
    requests = [random_request(i, rng, 40 if i == 0 else 4, ignore_eos=True) for i in range(12)]
    bad = next(r for r in requests[4:] if r.media is not None)
    engine = make_engine(our_tiny_mllama, slots=4, max_prefill_requests=4, stage_vision_images=1)
    encode = engine.runner.encode

    def failing(media):
        if media is bad.media:
            raise RuntimeError("corrupt pixels")
        return encode(media)

    engine.runner.encode = failing
    out = {c.request_id: c for c in engine.generate(requests)}
    assert out[bad.request_id].finish_reason == "error" and "corrupt pixels" in out[bad.request_id].error
    want = run_all(make_engine(our_tiny_mllama, slots=4, max_prefill_requests=4), requests)
    assert {k: c.token_ids for k, c in out.items() if k != bad.request_id} == \
        {k: v for k, v in want.items() if k != bad.request_id}
    assert len(engine.scheduler.free) == 4  # every slot came back, the failed request's included


def test_a_runner_without_encode_is_refused():
    class NoStaging:
        num_slots, max_len = 2, 16

        def decode(self, batch):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="stage_vision_images"):
        Engine(NoStaging(), None, EngineConfig(max_num_seqs=2, cuda_graphs=False, stage_vision_images=2), ())


def test_dropped_requests_leave_the_group_and_free_their_slots(our_tiny_mllama):
    """What the endpoint does with a stream cancelled while its images are being encoded."""
    rng = random.Random(13)
    pool = [random_request(i, rng, 4, ignore_eos=True) for i in range(1, 12)]
    first, a, b = random_request(0, rng, 30, ignore_eos=True), *[r for r in pool if r.media is not None][:2]
    engine = make_engine(our_tiny_mllama, slots=4, max_prefill_requests=2, stage_vision_images=1)
    engine.add(first)
    engine.step()  # admitted directly: nothing was running
    engine.add(a)
    engine.add(b)
    engine.step()  # a group of a and b is formed and a's image encoded
    assert engine.staging.busy and len(engine.scheduler.free) == 1
    assert engine.staging.drop(lambda r: r is a) == [a] and len(engine.scheduler.free) == 2
    done = {}
    while engine.has_work():
        done.update({c.request_id: c.token_ids for c in engine.step()})
    assert set(done) == {first.request_id, b.request_id}
    assert done[b.request_id] == run_all(make_engine(our_tiny_mllama), [b])[b.request_id]
