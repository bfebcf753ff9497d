"""pipeline/cluster_watch.py with fake cluster state: the preprocess pool leaves one node's CPUs spare, and a
job whose lost node left actors unplaceable fails early, naming the node, the actors and the free resources."""

from __future__ import annotations

import threading

import pytest

from pipeline.cluster_watch import ClusterWatch, preprocess_pool_cap
from pipeline.watchdog import JobStalledError, iterate_with_stall_timeout
from tests.conftest import stuck_after_one


def node(nid: str, cpus: float, ip: str = "10.0.0.1") -> dict:
    return {"NodeID": nid * 8, "NodeManagerAddress": ip, "Alive": True, "Resources": {"CPU": cpus}}


def test_pool_leaves_the_largest_nodes_cpus_spare():
    assert preprocess_pool_cap(1, 8, [node("a", 16)]) == 8  # one node: nothing to survive
    assert preprocess_pool_cap(1, 8, [node("a", 1), node("b", 1), node("c", 1)]) == 2
    assert preprocess_pool_cap(1, 8, [node("a", 4), node("b", 16), node("c", 16)]) == 8
    assert preprocess_pool_cap(2, 8, [node("a", 1), node("b", 1)]) == 2  # never below the minimum
    assert preprocess_pool_cap(1, 8, [node("a", 0), node("b", 4)]) == 8  # a CPU-less head does not count


class Fake:
    def __init__(self):
        self.nodes = [node("h", 1, "10.0.0.1"), node("w", 1, "10.0.0.7")]
        self.actors = [{"State": "ALIVE", "Pid": 11}]

    def watch(self, loss_stall_s: float = 10) -> ClusterWatch:
        return ClusterWatch(lambda: self.nodes, lambda: self.actors, lambda: {"CPU": 0.0, "GPU": 1.0, "x": 3},
                            loss_stall_s=loss_stall_s)


def test_a_lost_node_with_unplaceable_actors_is_named():
    fake = Fake()
    watch = fake.watch()
    assert watch.check(100) is None  # nothing lost
    fake.nodes = fake.nodes[:1]
    assert watch.check(100) is None  # lost, but every actor has a process
    fake.actors.append({"State": "RESTARTING", "Pid": 0})
    assert watch.check(5) is None  # not idle long enough
    message = watch.check(100)
    assert "10.0.0.7 (node wwwwwwww" in message and "1 actor(s) wait to restart" in message
    assert "{'CPU': 0.0, 'GPU': 1.0}" in message and "re-running the same command resumes" in message
    assert "GPU actor that keeps dying" not in message


def test_without_a_lost_node_the_stall_keeps_its_start_up_wording():
    assert "GPU actor that keeps dying while it starts" in Fake().watch().explain(1800)


def test_the_watchdog_fails_early_on_what_the_watch_finds():
    fake = Fake()
    watch = fake.watch(loss_stall_s=0.3)
    fake.nodes = fake.nodes[:1]
    fake.actors.append({"State": "RESTARTING", "Pid": 0})
    release = threading.Event()
    it = iterate_with_stall_timeout(stuck_after_one(release), stall_s=3600, what="output row", watch=watch)
    assert next(it) == 1
    with pytest.raises(JobStalledError, match="Lost since the job started: 10.0.0.7"):
        next(it)  # long before the hour of --stall-timeout
    release.set()
