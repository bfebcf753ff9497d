"""What a stalled job says (issue 18: it must name what it waits for, not guess), from fake cluster state in
the shape Ray's actor table has (`ActorClassName`, `State`, `Pid`, `NumRestarts`)."""

from __future__ import annotations

from pipeline.cluster_watch import ClusterWatch

PRE, GEN = "MapWorker(MapBatches(PreprocessStage))", "MapWorker(MapBatches(GenerateStage))"


def actor(name: str, state: str = "ALIVE", pid: int = 11, restarts: int = 0) -> dict:
    return {"ActorClassName": name, "State": state, "Pid": pid, "NumRestarts": restarts}


def watch(nodes: list[dict], actors: list[dict]) -> ClusterWatch:
    return ClusterWatch(lambda: nodes, lambda: actors, lambda: {"CPU": 0.0, "GPU": 1.0},
                        address_fn=lambda: None)  # no head to probe


def node(nid: str, ip: str) -> dict:
    return {"NodeID": nid * 8, "NodeManagerAddress": ip, "Alive": True, "Resources": {"CPU": 1}}


def test_a_lost_node_names_the_actors_that_cannot_restart():
    nodes = [node("h", "10.0.0.1"), node("w", "10.0.0.7")]
    actors = [actor(GEN), actor(PRE), actor(PRE, "RESTARTING", pid=0, restarts=1)]
    w = watch(nodes, actors)
    nodes.pop()
    message = w.check(10_000)
    assert "Lost since the job started: 10.0.0.7 (node wwwwwwww" in message
    assert f"1 actor(s) wait to restart and no node can take them (1 x {PRE}; free now: " in message


def test_no_lost_node_and_no_restart_does_not_blame_a_gpu_actor():
    message = watch([node("h", "10.0.0.1")], [actor(GEN), actor(PRE), actor(PRE)]).explain(1800)
    assert message.startswith("no output row for 1800 s: the job is stuck. No node was lost; free now: ")
    assert "All 3 actor(s) are alive and none has restarted" in message
    assert "GPU actor" not in message


def test_restarts_are_counted_and_named():
    actors = [actor(GEN, "RESTARTING", pid=0, restarts=7), actor(PRE)]
    message = watch([node("h", "10.0.0.1")], actors).explain(1800)
    assert f"7 actor restart(s) so far (1 x {GEN})" in message
    assert "keeps dying while it starts" in message


def test_an_actor_no_node_can_take_is_named():
    actors = [actor(GEN, "PENDING_CREATION", pid=0), actor(PRE)]
    message = watch([node("h", "10.0.0.1")], actors).explain(1800)
    assert f"1 actor(s) wait for resources no node has (1 x {GEN})" in message
    assert "GPU actor that keeps dying" not in message
