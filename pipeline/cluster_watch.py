"""Lost nodes: what a multi-node job needs to survive one, and what it says when it cannot. Driver side.

Ray rebuilds a block lost with its node by re-running the task that made it; for an *actor* task (our
preprocess and generate stages) only on that same actor, restarted (ray-project/ray#31794, #32489). Measured
on a simulated cluster (issue 18): when the surviving preprocess actors held every CPU, the restarted actor
could not be placed, the generate actor's in-flight batches waited for its blocks, and the job hung.

- `preprocess_pool_cap(lo, hi)`: on a cluster of two or more nodes with CPUs, the preprocess pool stays at
  most the cluster's CPUs minus its largest node's, so the actors of any one lost node can be placed again.
- `ClusterWatch`: nodes alive when the job starts; `check(idle_s)` (polled by the stall watchdog) fails the
  job once a node is lost, an actor waits unplaced to restart, and no row has arrived for
  `NODE_LOSS_STALL_S`, naming the node, the unplaced actors and the free resources; `explain(idle_s)`
  words the ordinary `--stall-timeout` failure the same way when it applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

NODE_LOSS_STALL_S = 300.0
WAITING = ("RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY")


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []


def _actors() -> Iterable[dict]:
    import ray

    return ray._private.state.actors().values() if ray.is_initialized() else []


def _free() -> dict:
    import ray

    return ray.available_resources() if ray.is_initialized() else {}


def preprocess_pool_cap(lo: int, hi: int, nodes: list[dict] | None = None) -> int:
    if nodes is None:
        nodes = _alive_nodes()
    cpus = [n.get("Resources", {}).get("CPU", 0) for n in nodes]
    cpus = [c for c in cpus if c > 0]
    if len(cpus) < 2:
        return hi  # one node: losing it loses the job anyway
    return max(lo, min(hi, int(sum(cpus) - max(cpus))))


class ClusterWatch:
    def __init__(self, nodes_fn: Callable[[], list[dict]] = _alive_nodes,
                 actors_fn: Callable[[], Iterable[dict]] = _actors, free_fn: Callable[[], dict] = _free,
                 loss_stall_s: float = NODE_LOSS_STALL_S):
        self.nodes_fn, self.actors_fn, self.free_fn, self.loss_stall_s = nodes_fn, actors_fn, free_fn, loss_stall_s
        self.start = {n["NodeID"]: n for n in nodes_fn()}
        self.lost_at: dict[str, float] = {}

    def lost(self) -> list[dict]:
        alive = {n["NodeID"] for n in self.nodes_fn()}
        for nid in self.start:
            if nid not in alive:
                self.lost_at.setdefault(nid, time.monotonic())
        return [self.start[nid] for nid in self.lost_at]

    def unplaced(self) -> list[dict]:
        """Actors waiting to (re)start with no process anywhere: no node can take them."""
        return [a for a in self.actors_fn() if a.get("State") in WAITING and not a.get("Pid")]

    def check(self, idle_s: float) -> str | None:
        if idle_s < self.loss_stall_s:
            return None
        lost = self.lost()
        if lost and self.unplaced():
            return self.explain(idle_s, lost)
        return None

    def explain(self, idle_s: float, lost: list[dict] | None = None) -> str:
        lost = self.lost() if lost is None else lost
        head = f"no output row for {idle_s:.0f} s: the job is stuck."
        tail = " Rows written so far are kept; re-running the same command resumes."
        if not lost:
            return (head + " A GPU actor that keeps dying while it starts (e.g. killed for memory while loading "
                    "weights) looks like this; see the Ray logs (`ray logs`, the dashboard)." + tail)
        names = ", ".join(f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:8]}, "
                          f"lost {time.monotonic() - self.lost_at[n['NodeID']]:.0f} s ago)" for n in lost)
        waiting = self.unplaced()
        free = {k: v for k, v in self.free_fn().items() if k in ("CPU", "GPU")}
        why = (f" {len(waiting)} actor(s) wait to restart and no node can take them (free now: {free or 'none'}): "
               "blocks that lived on the lost node are rebuilt by re-running their stage's actor tasks on that "
               "same actor restarted (ray-project/ray#31794, #32489), so the batches that need them wait. Add a "
               "node, or give the cluster spare CPUs beyond the preprocess pool (`preprocess_actors` in --config)."
               if waiting else " No actor waits to be placed; see the Ray logs (`ray logs`, the dashboard).")
        return f"{head} Lost since the job started: {names}.{why}{tail}"
