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
- The head node: when its GCS stops accepting connections, Ray's own driver waits
  `RAY_gcs_rpc_server_reconnect_timeout_s` (60 s by default) and then exits the process from C++, with
  nothing of ours run (rows received but not committed are dropped, and the reason is one line among
  hundreds of "Failed to push error to driver"). `check` fails the job at half that wait instead (a GCS that
  comes back sooner, as with GCS fault tolerance, is still waited for): the driver commits what it has and
  says the head is gone. Its exit then skips Ray's shutdown (`exit_without_ray_shutdown`).
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable

NODE_LOSS_STALL_S = 300.0
RAY_GCS_RECONNECT_S = 60.0  # Ray's default gcs_rpc_server_reconnect_timeout_s
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


def head_loss_s() -> float:
    """How long the GCS may be unreachable before the job fails: half of Ray's own wait, at least 5 s."""
    try:
        ray_wait = float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", RAY_GCS_RECONNECT_S))  # noqa: SIM112
    except ValueError:
        ray_wait = RAY_GCS_RECONNECT_S
    return max(5.0, ray_wait / 2)


def gcs_address() -> str | None:
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def accepts_connections(address: str, timeout_s: float = 2.0) -> bool:
    """A TCP connect to host:port: a dead head refuses at once (or times out when its machine is gone).
    Asking the GCS itself (`ray.nodes()`) would block the driver for as long as Ray retries."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def exit_without_ray_shutdown() -> None:
    """At interpreter exit, leave with status 1 before Ray's own atexit `ray.shutdown()` runs (atexit runs the
    last registered first). With the GCS gone, that shutdown blocks in the core worker's `shutdown_driver`
    until Ray's reconnect timer kills the process with status 1 anyway (measured: the message printed, then
    the process lingered until that timer); the result is the same, only without the wait."""
    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    atexit.register(leave)


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
                 loss_stall_s: float = NODE_LOSS_STALL_S, address_fn: Callable[[], str | None] = gcs_address,
                 reachable_fn: Callable[[str], bool] = accepts_connections, head_loss_after_s: float | None = None,
                 on_head_lost: Callable[[], None] = exit_without_ray_shutdown):
        self.nodes_fn, self.actors_fn, self.free_fn, self.loss_stall_s = nodes_fn, actors_fn, free_fn, loss_stall_s
        self.address_fn, self.reachable_fn, self.on_head_lost = address_fn, reachable_fn, on_head_lost
        self.head_loss_after_s = head_loss_s() if head_loss_after_s is None else head_loss_after_s
        self.address = address_fn()  # None until Ray runs; taken on the first check then (while the head lives)
        self.head_down_at: float | None = None
        self.start = {n["NodeID"]: n for n in nodes_fn()}
        self.lost_at: dict[str, float] = {}

    def head_down_s(self) -> float | None:
        """Seconds the head's GCS has refused connections (0 on the first refusal); None while it answers."""
        self.address = self.address or self.address_fn()
        if self.address is None or self.reachable_fn(self.address):
            self.head_down_at = None
            return None
        if self.head_down_at is None:
            self.head_down_at = time.monotonic()
        return time.monotonic() - self.head_down_at

    def head_lost(self, down_s: float) -> str:
        self.on_head_lost()
        return (f"lost the Ray head node: its GCS at {self.address} has not accepted a connection for {down_s:.0f} s "
                "(the head node died or was preempted, or its Ray processes were killed), and a job cannot go on "
                "without it. Rows received so far are committed; start the cluster again and re-run the same "
                "command to resume (finished input files are skipped).")

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
        down = self.head_down_s()
        if down is not None:  # every other question below goes to the GCS and would block while it is gone
            return self.head_lost(down) if down >= self.head_loss_after_s else None
        if idle_s < self.loss_stall_s:
            return None
        lost = self.lost()
        if lost and self.unplaced():
            return self.explain(idle_s, lost)
        return None

    def explain(self, idle_s: float, lost: list[dict] | None = None) -> str:
        down = self.head_down_s()
        if down is not None:
            return self.head_lost(down)
        lost = self.lost() if lost is None else lost
        head = f"no output row for {idle_s:.0f} s: the job is stuck."
        tail = " Rows written so far are kept; re-running the same command resumes."
        actors = [a for a in self.actors_fn() if a.get("State") != "DEAD"]
        waiting = [a for a in actors if a.get("State") in WAITING and not a.get("Pid")]
        free = {k: v for k, v in self.free_fn().items() if k in ("CPU", "GPU")}
        if not lost:
            return head + self._without_lost_node(actors, waiting, free) + tail
        names = ", ".join(f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:8]}, "
                          f"lost {time.monotonic() - self.lost_at[n['NodeID']]:.0f} s ago)" for n in lost)
        why = (f" {len(waiting)} actor(s) wait to restart and no node can take them ({_names(waiting)}; free now: "
               f"{free or 'none'}): blocks that lived on the lost node are rebuilt by re-running their stage's actor "
               "tasks on that same actor restarted (ray-project/ray#31794, #32489), so the batches that need them "
               "wait. Add a node, or give the cluster spare CPUs beyond the preprocess pool (`preprocess_actors` in "
               "--config)." if waiting else " No actor waits to be placed; see the Ray logs (`ray logs`, dashboard).")
        return f"{head} Lost since the job started: {names}.{why}{tail}"

    @staticmethod
    def _without_lost_node(actors: list[dict], waiting: list[dict], free: dict) -> str:
        """What the cluster shows when no node was lost: restarts (a crash loop), actors no node can take, or
        neither, said as seen rather than guessed."""
        restarts = [a["NumRestarts"] for a in actors if "NumRestarts" in a]
        seen = f" No node was lost; free now: {free or 'none'}."
        if len(restarts) < len(actors) or sum(restarts) > 0:  # some restarts, or a state that does not count them
            looping = [a for a in actors if a.get("NumRestarts", 0) > 0]
            count = f" {sum(restarts)} actor restart(s) so far ({_names(looping)})." if looping else ""
            return (seen + count + " A GPU actor that keeps dying while it starts (e.g. killed for memory while "
                    "loading weights) looks like this; see the Ray logs (`ray logs`, the dashboard).")
        if waiting:
            return (seen + f" {len(waiting)} actor(s) wait for resources no node has ({_names(waiting)}): check "
                    "--tp / --replicas against the cluster's GPUs.")
        return (seen + f" All {len(actors)} actor(s) are alive and none has restarted: the stream waits on a task or "
                "an object inside Ray Data; see `ray list tasks` or the dashboard.")


def _names(actors: list[dict]) -> str:
    counts: dict[str, int] = {}
    for a in actors:
        name = a.get("ActorClassName") or "?"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x {name}" for name, n in sorted(counts.items())) or "none"
