"""Losing the head node mid-job (issue 18): the job fails clearly and a re-run resumes.

- `ClusterWatch` with a fake GCS address: an unreachable head fails the job once it has been down for the
  configured wait (half of Ray's own `gcs_rpc_server_reconnect_timeout_s`), and nothing else is asked of the
  GCS while it is down (those calls block);
- end to end: a head started with `ray start --head --block` (its own process group) and `jobs/caption.py`
  connected to it through RAY_ADDRESS, as a driver outside the head's processes; after the first committed
  part the head's whole process group is SIGKILLed. The driver exits with status 1 and a message that names
  the lost head (without our watch Ray ends the process after 60 s from C++, its reason one line among
  hundreds, and the rows received since the last commit are dropped). The same command on a new head then
  finishes the job: every id exactly once across both runs. Every wait has a timeout (a hang fails the test).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cluster_watch import ClusterWatch, accepts_connections, head_loss_s
from pipeline.watchdog import JobStalledError, iterate_with_stall_timeout
from tests.cluster.test_node_loss import images_parquet, output_ids
from tests.conftest import free_port, stuck_after_one

ROOT = Path(__file__).resolve().parents[2]
CAPTION = ROOT / "jobs" / "caption.py"
RAY = Path(sys.executable).with_name("ray")


class FakeHead:
    def __init__(self):
        self.up = True
        self.lost_calls = 0

    def nodes(self) -> list[dict]:
        assert self.up, "asked the GCS for its nodes while it was down (blocks the driver)"
        return [{"NodeID": "h" * 8, "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 1}}]

    def watch(self, after_s: float, loss_stall_s: float = 0.0) -> ClusterWatch:
        def lost() -> None:
            self.lost_calls += 1

        return ClusterWatch(self.nodes, lambda: [], lambda: {}, loss_stall_s=loss_stall_s,
                            address_fn=lambda: "10.0.0.1:6379", reachable_fn=lambda _: self.up,
                            head_loss_after_s=after_s, on_head_lost=lost)


def test_an_unreachable_head_fails_the_job_after_the_wait_and_names_it():
    head = FakeHead()
    assert head.watch(after_s=3600).check(10_000) is None  # up: the node checks run (and find nothing)
    watch = head.watch(after_s=3600)
    head.up = False
    assert watch.check(10_000) is None  # down, but for less than the wait: no verdict, no GCS call
    head.up = True
    assert watch.check(10_000) is None and watch.head_down_at is None  # back (GCS fault tolerance): reset
    head.up = False
    watch.head_loss_after_s = 0.0
    message = watch.check(0)
    assert message.startswith("lost the Ray head node: its GCS at 10.0.0.1:6379 has not accepted a connection")
    assert "re-run the same command to resume" in message and "GPU actor" not in message
    assert head.lost_calls == 1
    assert watch.explain(1800).startswith("lost the Ray head node")  # the --stall-timeout wording too


def test_the_watchdog_fails_early_when_the_head_is_lost():
    head = FakeHead()
    watch = head.watch(after_s=0.5, loss_stall_s=0.2)  # polls every 0.2 s
    release = threading.Event()
    it = iterate_with_stall_timeout(stuck_after_one(release), stall_s=3600, what="output row", watch=watch)
    assert next(it) == 1
    head.up = False
    with pytest.raises(JobStalledError, match="lost the Ray head node"):
        next(it)  # long before the hour of --stall-timeout
    release.set()


def test_head_wait_is_half_of_rays_own(monkeypatch):
    monkeypatch.delenv("RAY_gcs_rpc_server_reconnect_timeout_s", raising=False)
    assert head_loss_s() == 30.0  # Ray's default 60 s
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "600")  # raised for GCS fault tolerance
    assert head_loss_s() == 300.0
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "4")
    assert head_loss_s() == 5.0  # never on a blip
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "soon")
    assert head_loss_s() == 30.0


def test_accepts_connections_tells_a_listening_port_from_a_closed_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        assert accepts_connections(address)
    assert not accepts_connections(address)  # closed: refused at once



@contextlib.contextmanager
def head_node(tmp: Path, name: str, env: dict):
    """A one-node cluster from `ray start --head --block` in a process group of its own, so that exactly this
    cluster can be killed (`ray stop` would stop every Ray on the machine). Yields (process, GCS address)."""
    port = free_port()
    temp = Path("/tmp") / f"rhl{os.getpid()}{name}"  # short: Ray's socket paths must fit in 107 bytes
    log = tmp / f"{name}.head.log"
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield head, f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_head_lost_mid_job_fails_clearly_and_a_rerun_resumes(tiny_mllama_dir, tmp_path):
    n = 48
    data, out = images_parquet(tmp_path / "in", n, files=12), tmp_path / "out"
    cfg = tmp_path / "job.json"  # JSON is YAML
    cfg.write_text(json.dumps({"model": str(tiny_mllama_dir), "input": str(data), "output": str(out),
                               "max_new_tokens": 4, "max_model_len": 512, "batch_size": 4, "rows_per_file": 4,
                               "progress_interval_s": 5}))
    cmd = [sys.executable, str(CAPTION), "--config", str(cfg)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray's own driver gives up 30 s after losing the GCS (60 s by default); ours fails the job at half that.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex(), RAY_gcs_rpc_server_reconnect_timeout_s="30")
    log = tmp_path / "first.stderr"  # a file, not a pipe: a full pipe would block the job
    with head_node(tmp_path, "a", env) as (head, address):
        first = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RAY_ADDRESS": address}, stdout=subprocess.DEVNULL,
                                 stderr=log.open("w"), start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while first.poll() is None and not any(out.glob("part-*")):
                assert time.monotonic() < deadline, "no part committed in 240 s:\n" + log.read_text()[-3000:]
                time.sleep(0.2)
            assert first.poll() is None, "the job ended before the head was lost:\n" + log.read_text()[-3000:]
            os.killpg(head.pid, signal.SIGKILL)  # the head node: GCS, raylet, object store, its workers
            try:
                first.wait(timeout=120)  # the watch fails the job ~15 s after the loss; Ray itself at 30 s
            except subprocess.TimeoutExpired:
                pytest.fail("the driver hung after the head was lost:\n" + log.read_text()[-3000:])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
    err = log.read_text()
    assert first.returncode == 1, err[-3000:]
    assert "caption.py: error: lost the Ray head node: its GCS at " in err, err[-3000:]
    assert f":{address.rsplit(':', 1)[1]} has not accepted a connection" in err
    partial = output_ids(out)
    assert len(partial) == len(set(partial)) and 0 < len(partial) < n

    with head_node(tmp_path, "b", env) as (_, address):  # a new cluster, the same command
        again = subprocess.run(cmd, cwd=ROOT, env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True,
                               timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    ids = output_ids(out)
    assert sorted(ids) == [f"r{i:04d}" for i in range(n)]  # every id once across both runs
    assert f"skipped (already written) {len(partial)}" in again.stdout
