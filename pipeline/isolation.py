"""Run untrusted-media decoding in a child process, so a crash or hang costs one row, not the job.

RELIABILITY.md: an input that kills the decoding process makes Ray retry the task forever (the job hangs
silently). `IsolatedWorker(factory, init)` starts a spawned child that builds `handler = factory(*init)`
once and then answers `call(arg)` requests over a pipe. If the child dies (`WorkerCrashed`) or does not
answer within the timeout (`WorkerTimeout`, the child is killed), a fresh child is started for the next
call. `InputError`s raised by the handler travel back as the same typed error.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any

from models import errors as error_types


class WorkerCrashed(RuntimeError):
    kind = "decode_crash"


class WorkerTimeout(RuntimeError):
    kind = "decode_timeout"


def _serve(conn, factory: Callable, init: tuple) -> None:
    handler = factory(*init)
    while True:
        try:
            arg = conn.recv()
        except EOFError:
            return
        try:
            conn.send((True, handler(arg)))
        except error_types.InputError as exc:
            conn.send((False, (type(exc).__name__, exc.kind, str(exc))))
        except Exception as exc:  # noqa: BLE001 - any other failure is still this row's problem
            conn.send((False, ("InputError", "preprocess_error", f"{type(exc).__name__}: {exc}")))


class IsolatedWorker:
    def __init__(self, factory: Callable, init: tuple = ()):
        self.factory, self.init = factory, init
        self.proc = None
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.factory, self.init), daemon=True)
        self.proc.start()
        child.close()

    def _restart(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self._start()

    def call(self, arg: Any, timeout: float = 60.0) -> Any:
        try:
            self.conn.send(arg)
            ready = self.conn.poll(timeout)
            result = self.conn.recv() if ready else None
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self.proc.join(timeout=5)  # the pipe can close before the child is reaped: wait for its exit code
            code = self.proc.exitcode
            self._restart()
            raise WorkerCrashed(f"the decoder process died (exit code {code})") from None
        if not ready:
            self._restart()
            raise WorkerTimeout(f"decoding took longer than {timeout:.0f}s")
        ok, payload = result
        if ok:
            return payload
        cls_name, kind, message = payload
        cls = getattr(error_types, cls_name, error_types.InputError)
        raise cls(message, kind=kind)

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()

    def __del__(self):
        self.close()
