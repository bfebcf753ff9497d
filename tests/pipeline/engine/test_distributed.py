"""pipeline/engine/distributed.py: a replica of gloo processes driven by the test process (rank 0).

Lockstep calls with real collectives, two replicas side by side (each rendezvous on its own run-time
port), clean shutdown (workers exit 0), and a clear `RankDiedError` when a rank fails at start-up, exits
inside a call, or is killed between calls.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from pipeline.engine.distributed import RankDiedError, RankFailedError, Replica

ECHO = f"{Path(__file__).with_name('tp_factories.py')}:Echo"


def test_lockstep_calls_two_replicas_and_clean_shutdown():
    with Replica.start(3, ECHO, backend="gloo", timeout_s=60) as a, Replica.start(2, ECHO, backend="gloo") as b:
        assert a.call("rank_sum", 2.0) == 2.0 * (1 + 2 + 3)
        assert b.call("rank_sum", 1.0) == 3.0
        assert torch.equal(a.call("gather", 2), torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
        assert a.call("pid") == os.getpid()  # rank 0 is the driver itself
        assert len(set(a.worker_pids + b.worker_pids)) == 3
        workers = a.workers + b.workers
    assert [p.exitcode for p in workers] == [0, 0, 0]
    with pytest.raises(RuntimeError, match="shut down"):
        a.call("pid")


def test_factory_failure_on_a_rank_is_reported_at_start():
    with pytest.raises(RankDiedError, match=r"rank 1 \(pid \d+\) exited with status 1"):
        Replica.start(2, ECHO, (1,), backend="gloo", timeout_s=60)


def test_rank_exiting_inside_a_call_is_reported():
    with Replica.start(2, ECHO, backend="gloo", timeout_s=60) as rep, \
            pytest.raises(RankDiedError, match="rank 1 .* exited with status 3"):
        rep.call("die_on", 1)


def test_exceptions_keep_lockstep_or_mark_the_replica_broken():
    with Replica.start(2, ECHO, backend="gloo", timeout_s=60) as rep:
        with pytest.raises(ValueError, match="failure on rank 0"):
            rep.call("fail_on", 0)  # rank 0's own error (rank 1 succeeded): the replica goes on
        assert rep.call("rank_sum", 1.0) == 3.0
        with pytest.raises(RankFailedError, match="fail_on failed on another rank"):
            rep.call("fail_on", 1)
        with pytest.raises(RuntimeError, match="broken"):
            rep.call("rank_sum", 1.0)
        workers = rep.workers
    assert [p.exitcode for p in workers] == [0]


def test_killed_rank_is_reported_at_the_next_call():
    with Replica.start(2, ECHO, backend="gloo", timeout_s=60) as rep:
        assert rep.call("rank_sum", 1.0) == 3.0
        os.kill(rep.worker_pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while rep.workers[0].exitcode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(RankDiedError, match=f"status {-signal.SIGKILL}"):
            rep.call("rank_sum", 1.0)


def test_tp1_runs_in_process():
    with Replica.start(1, ECHO, backend="gloo") as rep:
        assert rep.workers == [] and rep.call("rank_sum", 5.0) == 5.0
