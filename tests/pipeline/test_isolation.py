"""pipeline/isolation.py: a crashing or hanging decoder costs one call, typed errors travel back."""

from __future__ import annotations

import os
import time

import pytest

from models.errors import MediaDecodeError
from pipeline.isolation import IsolatedWorker, WorkerCrashed, WorkerTimeout


def handler_factory(prefix):
    def handle(arg):
        if arg == "crash":
            os._exit(11)
        if arg == "hang":
            time.sleep(60)
        if arg == "bad":
            raise MediaDecodeError("cannot identify image file")
        if arg == "bug":
            raise ZeroDivisionError("oops")
        return prefix + arg

    return handle


def test_crash_hang_and_typed_errors_are_isolated():
    w = IsolatedWorker(handler_factory, ("ok:",))
    try:
        assert w.call("a") == "ok:a"
        with pytest.raises(WorkerCrashed, match="exit code 11"):
            w.call("crash")
        assert w.call("b") == "ok:b"  # a fresh child took over
        with pytest.raises(WorkerTimeout):
            w.call("hang", timeout=1.0)
        assert w.call("c") == "ok:c"
        with pytest.raises(MediaDecodeError) as err:
            w.call("bad")
        assert err.value.row_error() == "decode_error: cannot identify image file"
        with pytest.raises(Exception) as err:
            w.call("bug")
        assert err.value.kind == "preprocess_error" and "ZeroDivisionError" in str(err.value)
    finally:
        w.close()
