"""pipeline/serve/stream_engine.py: what the streaming wrapper forwards, how each step's tokens reach the event
loops, and how lagging token events merge."""

from types import SimpleNamespace

import torch

from ops.sampling import SamplingParams
from pipeline.engine.config import EngineConfig
from pipeline.engine.engine import Engine
from pipeline.serve.stream_engine import ServeRequest, StreamingEngine, _merged


def test_the_engine_report_sees_the_wrapped_engines_timer():
    engine = SimpleNamespace(timer=object(), stats={"generated_tokens": 3}, scheduler=None, tokenizer=None)
    wrapped = StreamingEngine(engine)
    assert wrapped.timer is engine.timer and wrapped.stats is engine.stats


def test_consecutive_tokens_of_one_choice_merge_in_order():
    events = [(0, "tokens", [1]), (0, "tokens", [2, 3]), (1, "tokens", [7]), (0, "tokens", [4]),
              (0, "done", "f0"), (1, "tokens", [8]), (1, "tokens", [9])]
    assert _merged(events) == [(0, "tokens", [1, 2, 3]), (1, "tokens", [7]), (0, "tokens", [4]), (0, "done", "f0"),
                               (1, "tokens", [8, 9])]


class OneHotRunner:
    """A model that always samples token 3."""

    def __init__(self, slots: int = 4):
        self.num_slots, self.max_len, self.device = slots, 64, torch.device("cpu")
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)

    def check(self, prompt_ids, media):
        return None

    def prefill(self, prompts, media, slots):
        return torch.nn.functional.one_hot(torch.full((len(prompts),), 3), 8).float()

    def decode(self, batch):
        return torch.nn.functional.one_hot(torch.full((batch,), 3), 8).float()


class RecordingLoop:
    """Stands in for an event loop: keeps what the engine thread hands it (or refuses, as a closed loop does)."""

    def __init__(self, closed: bool = False):
        self.calls, self.closed = [], closed

    def call_soon_threadsafe(self, fn, *args):
        if self.closed:
            raise RuntimeError("Event loop is closed")
        self.calls.append((fn, args))


def streaming(requests_per_loop: dict, new_tokens: int = 8) -> StreamingEngine:
    engine = StreamingEngine(Engine(OneHotRunner(), None, EngineConfig(max_num_seqs=4, cuda_graphs=False), ()))
    for loop, names in requests_per_loop.items():
        for name in names:
            r = ServeRequest(name, [1, 2], None, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
            r.loop, r.on_tokens = loop, (lambda ids, name=name, loop=loop: loop.got.setdefault(name, []).extend(ids))
            engine.add(r)
    return engine


def test_each_step_hands_each_event_loop_one_batch_of_its_streams_tokens():
    a, b = RecordingLoop(), RecordingLoop()
    a.got, b.got = {}, {}
    engine = streaming({a: ["a1", "a2"], b: ["b1"]})
    done = []
    for _ in range(3):  # every stream has new tokens after each step (the first prefills and decodes)
        done += engine.step()
        assert len(a.calls) == len(b.calls) == 1  # one hand-off per loop and step, however many streams
        for loop in (a, b):
            fn, args = loop.calls.pop()
            fn(*args)  # what the loop runs on its own thread
    assert a.got == {"a1": [3] * 4, "a2": [3] * 4} and b.got == {"b1": [3] * 4}
    while engine.has_work():
        done += engine.step()
    assert sorted(c.request_id for c in done) == ["a1", "a2", "b1"]
    assert all(c.token_ids == [3] * 8 and c.error is None for c in done)


def test_a_closed_event_loop_cancels_its_streams_and_frees_their_slots():
    gone, alive = RecordingLoop(closed=True), RecordingLoop()
    gone.got, alive.got = {}, {}
    engine = streaming({gone: ["g"], alive: ["a"]}, new_tokens=6)
    engine.step()  # prefill; handing "g" its first token fails
    done = engine.step()
    assert [(c.request_id, c.error) for c in done] == [("g", "cancelled: the client went away")]
    assert engine.running_count() == 1 and len(alive.calls) == 2  # "a" streams on
