"""pipeline/serve/stream_engine.py: what the streaming wrapper forwards and how lagging token events merge."""

from types import SimpleNamespace

from pipeline.serve.stream_engine import StreamingEngine, _merged


def test_the_engine_report_sees_the_wrapped_engines_timer():
    engine = SimpleNamespace(timer=object(), stats={"generated_tokens": 3}, scheduler=None, tokenizer=None)
    wrapped = StreamingEngine(engine)
    assert wrapped.timer is engine.timer and wrapped.stats is engine.stats


def test_consecutive_tokens_of_one_choice_merge_in_order():
    events = [(0, "tokens", [1]), (0, "tokens", [2, 3]), (1, "tokens", [7]), (0, "tokens", [4]),
              (0, "done", "f0"), (1, "tokens", [8]), (1, "tokens", [9])]
    assert _merged(events) == [(0, "tokens", [1, 2, 3]), (1, "tokens", [7]), (0, "tokens", [4]), (0, "done", "f0"),
                               (1, "tokens", [8, 9])]
