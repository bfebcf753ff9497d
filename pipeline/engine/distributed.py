"""One tensor-parallel replica: `tp` processes under torch.distributed, the calling process driving.

    with Replica.start(2, "pipeline.engine.distributed:ModelShard", (ckpt_dir, "float32")) as replica:
        tokens = replica.call("apply", "models.generate:greedy_generate", prompts, media, max_new_tokens=8)

Contract:
- The calling process is rank 0 (the engine, the Ray actor); ranks 1..tp-1 are spawned processes
  (multiprocessing "spawn", daemonic, so they never outlive a cleanly exiting driver).
- Rendezvous: rank 0 opens a TCPStore on 127.0.0.1 port 0, so the OS picks a free port at run time and
  several replicas share a node without colliding (no bind-then-release race). Process groups are built
  as objects (`ProcessGroupGloo` on the CPU, `ProcessGroupNCCL` on GPUs, rank r on `cuda:devices[r]`) and
  handed around inside an `ops.parallel.ParallelContext`: no default group, no global state.
- `factory` ("package.module:attr" or "/path/to/file.py:attr") is called as `factory(ctx, *args)` on every
  rank and gives that rank's local object (e.g. `ModelShard`, its shard of a model).
- `call(method, *args, **kwargs)`: rank 0 broadcasts the call, every rank runs `getattr(local, method)` on
  the same arguments (lockstep: the collectives inside line up), rank 0's result is returned. Arguments
  travel in ops/wire.py's format (our own classes, builtins, tensors as raw bytes); keep tensors on the CPU.
- Failure: an exception inside a call does not break the lockstep: after every call the ranks sum an
  error flag (one tiny all-reduce). If rank 0 raised, its exception propagates (a bad input fails the
  same way everywhere, so the replica stays usable); if only other ranks raised, the ranks' states may
  differ and rank 0 raises `RankFailedError` (the replica is then finished). A rank that dies (or fails at
  start-up) makes rank 0 raise `RankDiedError` naming the rank, its pid and exit status, at start-up or at
  the next call (before the call if the death is already known, from inside it when a collective loses
  its peer). After either error: `shutdown()` and start another replica.
- A rank that dies while rank 0 waits inside a CUDA-graph replay never surfaces as an error: the NCCL
  kernels of the graph spin on the GPU for the lost peer (no watchdog sees graphed collectives). So
  `Replica.start(..., on_rank_death=fn)` watches the workers' process sentinels on a thread and calls
  `fn(message)` as soon as one exits while the replica is open; a Ray actor passes a function that ends
  its process (Ray then restarts the replica and retries its rows). Workers in turn exit when their parent
  (rank 0) is gone, so no orphan rank keeps its GPU's memory after rank 0 dies.
- `shutdown()` (also on leaving the `with` block): every rank shuts its process group down (never left to
  a destructor: see `_close_group`), workers leave their loop and exit 0; stragglers are terminated after
  `join_timeout_s`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ops.parallel import ParallelContext

HOST = "127.0.0.1"


class RankDiedError(RuntimeError):
    """A rank of a tensor-parallel replica exited; the replica cannot continue."""


class RankFailedError(RuntimeError):
    """A call failed on other ranks but not on rank 0: the ranks' states may differ; restart the replica."""


def _flag_sum(ctx: ParallelContext, failed: bool) -> int:
    return int(ctx.all_reduce(torch.tensor([int(failed)], device=ctx.device)).item())


def resolve(spec: str) -> Any:
    """'pkg.module:attr' or '/path/file.py:attr' -> the attribute."""
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        name = "_tp_factory_" + os.path.basename(where)[:-3]
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, where)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, attr)


def _process_group(store: Any, rank: int, world: int, backend: str, timeout: timedelta) -> Any:
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    raise ValueError(f"unknown backend {backend!r} (gloo or nccl)")


def _close_group(group: Any, device: str, timeout_s: float = 60.0) -> bool:
    """Tear a process group down on purpose, on every rank at the same point, once the rank's CUDA graphs
    (which hold NCCL kernels) are gone and its device is idle. Left to its destructor, a ProcessGroupNCCL
    aborts its communicators when garbage-collected; seen on two H200s: that abort hung rank 0 for the 600 s
    timeout while the next replica's ranks waited for it, and a shutdown with rank 0's graphs still alive
    hung too. Bounded: returns False (and leaves the group to the process's exit) if it does not finish."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    close = getattr(group, "shutdown", None)
    if close is None:
        return True
    closer = threading.Thread(target=close, name="pg-shutdown", daemon=True)
    closer.start()
    closer.join(timeout_s)
    return not closer.is_alive()


def _exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """A rank outliving rank 0 would hold its GPU's memory forever (e.g. after rank 0's os._exit)."""
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)


def _worker_main(rank: int, world: int, port: int, backend: str, device: str, factory: str, args: tuple,
                 timeout_s: float) -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(HOST, port, world, False, timeout=timeout)
        store.set(f"up/{rank}", str(os.getpid()))
        ctx = ParallelContext(rank, world, _process_group(store, rank, world, backend, timeout), device)
        local = resolve(factory)(ctx, *args)
        ctx.all_reduce(torch.ones(1, device=device))  # ready
        while True:
            msg = ctx.broadcast_object(None)
            if msg is None:
                del local  # its CUDA graphs go before the communicator (see _close_group)
                _close_group(ctx.group, device)  # rank 0 does the same after sending None
                break
            method, a, kw = msg
            try:
                getattr(local, method)(*a, **kw)
                failed = False
            except Exception:  # rank 0 learns of it through the flag; see the module docstring
                traceback.print_exc()
                failed = True
            _flag_sum(ctx, failed)
    except BaseException:
        print(f"tensor-parallel rank {rank} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


class Replica:
    def __init__(self, ctx: ParallelContext, local: Any, workers: list[Any], store: Any):
        self.ctx, self.local, self.workers, self._store = ctx, local, workers, store
        self.closed = self.broken = False

    @classmethod
    def start(cls, tp: int, factory: str, args: tuple = (), *, backend: str | None = None,
              devices: list[int] | None = None, timeout_s: float = 600.0,
              on_rank_death: Callable[[str], None] | None = None) -> Replica:
        if tp < 1:
            raise ValueError("tp must be >= 1")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        devices = devices if devices is not None else list(range(tp))
        device_of = [f"cuda:{devices[r]}" if backend == "nccl" else "cpu" for r in range(tp)]
        if tp == 1:
            ctx = ParallelContext(device=device_of[0])
            return cls(ctx, resolve(factory)(ctx, *args), [], None)
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(HOST, 0, tp, True, timeout=timeout, wait_for_workers=False)
        spawn = mp.get_context("spawn")
        workers = []
        for rank in range(1, tp):
            p = spawn.Process(target=_worker_main, name=f"tp-rank-{rank}", daemon=True,
                              args=(rank, tp, store.port, backend, device_of[rank], factory, args, timeout_s))
            p.start()
            workers.append(p)
        replica = cls(ParallelContext(0, tp, None, device_of[0]), None, workers, store)
        if on_rank_death is not None:
            threading.Thread(target=replica._watch, args=(on_rank_death,), name="tp-rank-watch", daemon=True).start()
        try:
            replica._wait_for_workers(timeout_s)
            if backend == "nccl":
                torch.cuda.set_device(device_of[0])
            ctx = ParallelContext(0, tp, _process_group(store, 0, tp, backend, timeout), device_of[0])
            replica.ctx = ctx
            replica.local = resolve(factory)(ctx, *args)
            replica._guard(lambda: ctx.all_reduce(torch.ones(1, device=ctx.device)))
        except BaseException:
            replica.shutdown()
            raise
        return replica

    def _wait_for_workers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        keys = [f"up/{r}" for r in range(1, self.ctx.world_size)]
        while not self._store.check(keys):
            self._raise_if_dead()
            if time.monotonic() > deadline:
                raise TimeoutError(f"tensor-parallel ranks did not connect within {timeout_s:.0f} s")
            time.sleep(0.01)

    def _watch(self, on_rank_death: Callable[[str], None]) -> None:
        multiprocessing.connection.wait([p.sentinel for p in self.workers])
        if self.closed:
            return
        for p in self.workers:
            p.join(0.1)  # reap, so the message carries the exit status
        on_rank_death("tensor-parallel replica lost a rank: " + "; ".join(self._dead()))

    def kill_workers(self) -> None:
        """SIGKILL every rank but this one (a replica that cannot continue; no clean shutdown possible)."""
        for p in self.workers:
            if p.exitcode is None:
                p.kill()

    def _dead(self) -> list[str]:
        return [f"rank {r} (pid {p.pid}) " + (f"was killed by signal {-p.exitcode}" if p.exitcode < 0
                                               else f"exited with status {p.exitcode}")
                for r, p in enumerate(self.workers, start=1) if p.exitcode is not None]

    def _raise_if_dead(self) -> None:
        dead = self._dead()
        if dead:
            raise RankDiedError("tensor-parallel replica lost a rank: " + "; ".join(dead))

    def _guard(self, fn: Any) -> Any:
        self._raise_if_dead()
        try:
            return fn()
        except Exception as err:
            # A lost peer surfaces as a backend error first; give the dead process a moment to be reaped.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not self._dead():
                time.sleep(0.05)
            if self._dead():
                raise RankDiedError("tensor-parallel replica lost a rank: " + "; ".join(self._dead())) from err
            raise

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run `local.method(*args, **kwargs)` on every rank in lockstep; rank 0's result."""
        if self.closed or self.broken:
            raise RuntimeError("replica is shut down" if self.closed else "replica is broken (RankFailedError)")

        def run():
            self.ctx.broadcast_object((method, args, kwargs))
            try:
                result = getattr(self.local, method)(*args, **kwargs)
            except Exception:
                _flag_sum(self.ctx, True)
                raise
            if _flag_sum(self.ctx, False):
                self.broken = True
                raise RankFailedError(f"{method} failed on another rank (see its traceback); restart the replica")
            return result

        return self._guard(run) if self.workers else getattr(self.local, method)(*args, **kwargs)

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.workers]

    def shutdown(self, join_timeout_s: float = 30.0) -> None:
        if self.closed:
            return
        self.closed = True
        if self.workers and not self._dead() and self.ctx.group is not None:
            with contextlib.suppress(Exception):  # a rank is gone; the others are terminated below
                self.ctx.broadcast_object(None)
                self.local = None  # rank 0's shard and its CUDA graphs, as every worker drops its own
                if not _close_group(self.ctx.group, self.ctx.device):
                    print("tensor-parallel: process group shutdown timed out; ranks are terminated",
                          file=sys.stderr)
        for p in self.workers:
            p.join(join_timeout_s)
            if p.exitcode is None:
                p.terminate()
                p.join(5.0)

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class ModelShard:
    """A rank's shard of a checkpoint's model (registry architecture), loaded shard by shard."""

    def __init__(self, ctx: ParallelContext, ckpt_dir: str, dtype: str = "bfloat16"):
        from models.registry import architecture, model_class

        cls = model_class(architecture(ckpt_dir))
        kwargs = {"tp": ctx} if ctx.world_size > 1 else {}
        self.ctx = ctx
        self.model = cls.from_pretrained(ckpt_dir, dtype=getattr(torch, dtype), device=ctx.device, **kwargs)

    def kv_cache_spec(self) -> tuple[int, int, int]:
        return self.model.kv_cache_spec()

    def apply(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """`fn(model, *args, **kwargs)` for a function named 'module:attr' (e.g. models.generate's)."""
        return resolve(fn)(self.model, *args, **kwargs)
