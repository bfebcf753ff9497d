"""The endpoint's engine in a process of its own, so its steps never wait for the replica's GIL.

In a Ray Serve replica the engine thread shares the GIL with the event loop that writes ~one SSE chunk per
token and with Serve's own threads (its replica loop, Ray's streaming-generator pool). On the CPU mock
(scripts/serve_mock_bench.py --ray-serve) those held the GIL ~16% of the time and the engine's decode steps took
19-20 ms at p50 for a 16.5 ms step; on an H200 one-request admissions took 90-120 ms in the replica against 68
ms alone. vLLM moved its engine core out of the API server's process for the same reason. Measured on the
2-core CPU mock (no gain, BENCHMARKS.md session 10) and in two A/Bs on an H200 (Mllama-11B shapes, Ray Serve,
session 11): at concurrency 64 right after the warm-up 708 output tokens/s against 586 with the engine thread,
but after levels 1 and 16 675 against 668, and at concurrency 1 TTFT p50 117 against 97 ms (not yet explained:
a one-tile Mllama request's 3.8 MB of uint8 pixels cross the pipe in 2-4 ms on a 2-core CPU, moved to shared
memory by torch's reducers). Session 13 (H200, traces) found the gain once admissions are large: at concurrency
64 the decode step at width 64 took 19.8 ms here against 22.7 in the replica's thread (19.5 offline) and
one-request admissions 80 against 109 ms; with staged vision the endpoint reached 0.80-0.82 of the offline
engine against 0.60 in a thread. So it is the default where a replica has one GPU (`engine_placement` in
pipeline/serve/service.py; `--no-engine-process` turns it off).

Contract:
- `ProcessDriver(factory, args, tokenizer)` is an `AsyncEngine` driver (pipeline/serve/stream_engine.py): it
  starts a "spawn" child that builds its engine with `resolve(factory)(*args)` (a 'module:function' spec, as
  tensor parallelism's ranks use), wraps it in `StreamingEngine` + `EngineThread` exactly as `ThreadDriver`
  does, and answers once the engine is built (weights loaded, graphs captured) or raises if the child died.
- Requests cross one pipe as plain `Request`s (prompt ids, CPU media tensors, sampling params); each engine
  step sends back one message with every stream's new token ids, each completion one message; a reader thread
  in the replica hands the tokens to the requests' event loops (one call per loop and step, as in-thread)
  and resolves the requests' Futures. `running_count()` and `stats` are the child's, as of its last message.
- The child ends with its parent (`_exit_with_parent`); if it dies, every request in flight completes with
  an `engine_error` and `alive()` turns False, so Serve's health check replaces the replica.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import traceback
from concurrent.futures import Future
from typing import Any

from pipeline.engine.distributed import _exit_with_parent, resolve
from pipeline.engine.request import Completion, Request
from pipeline.serve.stream_engine import ServeRequest, StreamingEngine, to_event_loops

log = logging.getLogger(__name__)


class ProcessDriver:
    def __init__(self, factory: str, args: tuple, tokenizer: Any, report_s: float = 60.0):
        self.tokenizer = tokenizer
        spawn = mp.get_context("spawn")
        self.conn, child_end = spawn.Pipe()
        # Not a daemon: a tensor-parallel engine starts its ranks from this process.
        self.process = spawn.Process(target=_child_main, name="vlmcap-engine", daemon=False,
                                     args=(child_end, factory, args, report_s, os.getpid()))
        self.process.start()
        child_end.close()
        self._send_lock = threading.Lock()
        self.requests: dict[str, tuple[ServeRequest, Future]] = {}
        self.dead = False
        try:
            kind, info = self.conn.recv()  # blocks while the child loads weights and captures graphs
        except EOFError:
            self.process.join(10)
            raise RuntimeError(f"the engine process exited while starting (status {self.process.exitcode}); "
                               "its traceback is above") from None
        assert kind == "ready", kind
        self._slots, self._running, self.stats = info["slots"], 0, info["stats"]
        self.reader = threading.Thread(target=self._read, name="engine-process-reader", daemon=True)
        self.reader.start()

    def slots(self) -> int:
        return self._slots

    def running_count(self) -> int:
        return self._running

    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()

    def submit(self, request: ServeRequest) -> Future:
        fut: Future = Future()
        self.requests[request.request_id] = (request, fut)
        if self.dead or not self._send(("add", Request(request.request_id, request.prompt_ids, request.media,
                                                       request.sampling))):
            self.requests.pop(request.request_id, None)
            fut.set_result(Completion.failed(request, "engine_error: the engine process is not running"))
        return fut

    def cancel(self, request: ServeRequest) -> None:
        request.cancelled = True
        self._send(("cancel", request.request_id))

    def stop(self, timeout_s: float = 30.0) -> None:
        self._send(("stop", None))
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def _send(self, msg: tuple) -> bool:
        try:
            with self._send_lock:
                self.conn.send(msg)
            return True
        except (OSError, ValueError):  # the child is gone (or the pipe closed by stop)
            return False

    def _read(self) -> None:
        try:
            while True:
                kind, payload, self._running, stats = self.conn.recv()
                if stats is not None:
                    self.stats = stats
                if kind == "tokens":
                    fresh = [(r, ids) for rid, ids in payload if (r := self._request(rid)) is not None]
                    for r in to_event_loops(fresh):  # its loop is closed: nobody reads that stream
                        self.cancel(r)
                elif kind == "done":
                    _, fut = self.requests.pop(payload.request_id, (None, None))
                    if fut is not None:
                        fut.set_result(payload)
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a broken message ends this replica's engine like a dead child
            log.exception("engine process reader failed")
        self.dead = True
        self.process.join(5)
        message = f"engine_error: the engine process exited (status {self.process.exitcode})"
        for request, fut in list(self.requests.values()):
            if not fut.done():
                fut.set_result(Completion.failed(request, message))
        self.requests.clear()

    def _request(self, request_id: str) -> ServeRequest | None:
        entry = self.requests.get(request_id)
        return entry[0] if entry is not None else None


def _child_main(conn: Any, factory: str, args: tuple, report_s: float, parent_pid: int) -> None:
    """The engine process: build the engine, then take requests and cancels from the pipe until "stop"."""
    from pipeline.generate_stage import EngineThread

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    lock = threading.Lock()

    def send(kind: str, payload: Any, with_stats: bool = False) -> None:
        with lock:
            conn.send((kind, payload, streaming.running_count(), dict(streaming.stats) if with_stats else None))

    try:
        streaming = StreamingEngine(resolve(factory)(*args),
                                    hand_off=lambda fresh: send("tokens", [(r.request_id, ids) for r, ids in fresh]))
        thread = EngineThread(streaming, report_s)
        with lock:
            conn.send(("ready", {"slots": len(streaming.scheduler.free), "stats": dict(streaming.stats)}))
        live: dict[str, ServeRequest] = {}
        while True:
            kind, payload = conn.recv()
            if kind == "add":
                r = ServeRequest(payload.request_id, payload.prompt_ids, payload.media, payload.sampling)
                live[r.request_id] = r

                def finished(f: Future, rid: str = r.request_id) -> None:
                    live.pop(rid, None)
                    send("done", f.result(), with_stats=True)

                thread.submit(r).add_done_callback(finished)
            elif kind == "cancel" and payload in live:
                live[payload].cancelled = True
                streaming.note_cancel()
            elif kind == "stop":
                thread.stop()
                return
    except EOFError:  # the replica is gone
        os._exit(0)
    except BaseException:
        print("the engine process failed:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def build_serve_engine(model_dir: str, config: Any, tp: int, random_weights: bool) -> Any:
    """The factory the endpoint's engine process runs: the replica's engine (`build_replica_engine`)."""
    from pipeline.engine.builder import build_replica_engine

    def rank_died(message: str) -> None:
        print(f"[serve] {message}; ending the engine process", file=sys.stderr, flush=True)
        os._exit(1)

    return build_replica_engine(model_dir, config, tp, random_weights, rank_died)[0]
