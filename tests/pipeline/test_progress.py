"""Driver progress lines (pipeline/progress.py), no Ray: a small job's rows show as they arrive (one line per
tenth of the job crossed), a big job gets at most ten lines more than its interval gives, the start-up line
says what it is waiting for, and the ETA ignores the start-up."""

from __future__ import annotations

import io
import re

import pyarrow as pa

from pipeline.progress import Progress


def batch(n: int, error: str | None = None) -> pa.Table:
    return pa.table({"num_generated_tokens": [4] * n, "finish_reason": ["stop"] * n, "error": [error] * n})


def counts(out: io.StringIO) -> list[str]:
    return re.findall(r"\[caption\] (\d+/\d+) ", out.getvalue())


def test_small_job_prints_each_arrival_that_crosses_a_tenth():
    out = io.StringIO()
    p = Progress(6, interval_s=3600, out=out)  # the interval alone would print nothing
    for _ in range(6):
        p.update(batch(1))
    assert counts(out) == [f"{k}/6" for k in range(1, 7)]
    assert "ETA" in out.getvalue().splitlines()[-1]


def test_big_job_gets_at_most_ten_extra_lines():
    out = io.StringIO()
    p = Progress(100_000, interval_s=3600, out=out)
    for _ in range(1000):
        p.update(batch(100))
    assert counts(out) == [f"{k * 10_000}/100000" for k in range(1, 11)]
    out = io.StringIO()
    p = Progress(None, interval_s=3600, out=out)  # total unknown: the interval only
    p.update(batch(5, error="decode_error: x"))
    assert out.getvalue() == "" and p.errors == 5


def test_first_lines_say_what_the_job_waits_for():
    out = io.StringIO()
    p = Progress(6, interval_s=3600, out=out)
    p.line()
    assert "0/6 (0.0%) rows | waiting for the first rows" in out.getvalue()
    assert "rows/s" not in out.getvalue()
