"""pipeline/engine/distributed.py: a replica of gloo processes driven by the test process (rank 0).

Lockstep calls with real collectives, two replicas side by side (each rendezvous on its own run-time
port), clean shutdown (workers exit 0), and a clear `RankDiedError` when a rank fails at start-up, exits
inside a call, or is killed between calls; a killed rank reported at once by the watcher (no call in flight),
and ranks that never outlive rank 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
        with pytest.raises(RankDiedError, match=f"killed by signal {int(signal.SIGKILL)}"):
            rep.call("rank_sum", 1.0)


def test_rank_death_is_reported_at_once_by_the_watcher():
    """Under CUDA graphs rank 0 can wait inside a replay for a dead peer forever: the watcher calls back
    without any call in flight."""
    died = threading.Event()
    messages: list[str] = []

    def on_death(message: str) -> None:
        messages.append(message)
        died.set()

    with Replica.start(2, ECHO, backend="gloo", timeout_s=60, on_rank_death=on_death) as rep:
        assert rep.call("rank_sum", 1.0) == 3.0
        os.kill(rep.worker_pids[0], signal.SIGKILL)
        assert died.wait(10), "the watcher did not report the killed rank"
    assert messages == [f"tensor-parallel replica lost a rank: rank 1 (pid {rep.worker_pids[0]}) was killed by "
                        f"signal {int(signal.SIGKILL)}"]
    with Replica.start(2, ECHO, backend="gloo", timeout_s=60, on_rank_death=on_death) as rep:
        rep.call("rank_sum", 1.0)
    time.sleep(0.5)
    assert len(messages) == 1, "a clean shutdown is not a death"


RANK_0_DIES = """
import os, sys
sys.path.insert(0, {root!r})
from pipeline.engine.distributed import Replica
rep = Replica.start(2, {echo!r}, backend="gloo", timeout_s=60)
print(rep.worker_pids[0], flush=True)
rep.ctx.broadcast_object(("busy", (120.0,), {{}}))  # rank 1 is now busy outside any collective
os._exit(1)  # no shutdown: as a crash or the OOM killer would end rank 0
"""


def test_ranks_exit_when_rank_0_dies(tmp_path):
    root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run([sys.executable, "-c", RANK_0_DIES.format(root=root, echo=ECHO)], capture_output=True,
                         text=True, timeout=120)
    worker = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "an orphaned rank outlived rank 0 (it would hold its GPU's memory)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_tp1_runs_in_process():
    with Replica.start(1, ECHO, backend="gloo") as rep:
        assert rep.workers == [] and rep.call("rank_sum", 5.0) == 5.0
