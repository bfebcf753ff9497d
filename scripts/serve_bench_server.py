"""The server side of scripts/serve_bench.py: `jobs/serve.py` started in its own process session, readiness by
`GET /health`, and a stop as Ctrl-C stops it (then SIGTERM / SIGKILL to whatever of its session is left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:  # the OS picks it; the server then binds it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def start_server(args, port: int, log, extra: list[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "jobs" / "serve.py"), "--model", args.model_dir, "--port", str(port),
           "--max-num-seqs", str(args.max_num_seqs)] + (["--random-weights"] if args.random_weights else []) \
        + (["--no-ray"] if args.no_ray else []) + args.serve_arg + list(extra)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if "RAY_ADDRESS" not in env and Path("/tmp/ray/ray_current_cluster").exists():
        env["RAY_ADDRESS"] = "local"  # another `ray start` cluster here: ray.init() would join it, not start ours
    print(f"[serve_bench] starting: {' '.join(cmd)}", flush=True)
    # Own session: Ray's processes (GCS, raylet, workers) join the server's group, so cleanup finds them all.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        status, body = get_json(port, "/health")
        if status == 200 and body == {"status": "ok"}:
            return time.perf_counter() - t0
        time.sleep(1.0)
    raise TimeoutError(f"GET /health not ready after {timeout_s:.0f} s")


def session_pids(sid: int) -> list[int]:
    """Every process of the server's session: Ray's actor workers get process groups of their own, so the
    session (not the group) is what holds all of the server together."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:  # gone meanwhile, or not ours to see
                pass
    return pids


def stop_server(proc: subprocess.Popen, timeout_s: float) -> dict:
    """Ctrl-C (SIGINT to the server alone: Serve drains, Ray shuts down), then whatever of its session is left."""
    t0, out = time.perf_counter(), {}
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            out["forced"] = "server did not stop on SIGINT"
    for sig, grace in ((None, 10.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):  # None: Ray ends them itself
        left = [p for p in session_pids(proc.pid) if p != os.getpid()]
        if not left:
            break
        if sig is not None:
            out.setdefault("leftovers", []).append(f"{sig.name} to {len(left)}: " + "; ".join(
                Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
                for p in left[:5] if Path(f"/proc/{p}").exists()))
            for p in left:
                with contextlib.suppress(OSError):
                    os.kill(p, sig)
        end = time.perf_counter() + grace
        while proc.poll() is None or session_pids(proc.pid):  # poll() reaps the server itself
            if time.perf_counter() > end:
                break
            time.sleep(0.2)
    out.update(exit_status=proc.poll(), stop_s=round(time.perf_counter() - t0, 1),
               left_alive=len(session_pids(proc.pid)))
    return out


def log_tail(path: Path, n: int = 25) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if "Warning" not in x]
    return "\n".join(lines[-n:])
