"""ops/wire.py: rank messages round-trip exactly; tensors never go through torch.load; foreign globals refused."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from ops import wire
from ops.sampling import SamplingParams
from pipeline.engine.request import Request


def test_round_trip_of_a_call_message():
    media = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    msg = ("prefill", ([Request("r1", [1, 2, 3], None, SamplingParams(max_new_tokens=4, stop=("x",)))],
                       {"pixels": media, "half": torch.randn(3, 5).to(torch.bfloat16), "empty": torch.zeros(0, 2),
                        "np": np.arange(6, dtype=np.int32).reshape(2, 3), "dtype": torch.float16}),
           {"slots": [0, 5], "flag": None})
    out = wire.decode(wire.encode(msg))
    assert out[0] == "prefill" and out[2] == {"slots": [0, 5], "flag": None}
    req, d = out[1][0][0], out[1][1]
    assert req == msg[1][0][0]
    for k in ("pixels", "half", "empty"):
        assert d[k].dtype == msg[1][1][k].dtype and torch.equal(d[k], msg[1][1][k]), k
    assert np.array_equal(d["np"], msg[1][1]["np"]) and d["dtype"] is torch.float16


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_foreign_globals_and_functions_are_refused():
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        wire.decode(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        wire.decode(pickle.dumps(torch.ones(2)))  # torch's own tensor pickling ends in torch.load
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        wire.decode(pickle.dumps(wire.encode))  # a function of our own package is not a class
