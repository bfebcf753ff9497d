"""Benchmark the online endpoint (jobs/serve.py on Ray Serve) against the offline engine (issue 14, criterion 4).

    python scripts/serve_bench.py --model-dir $VLMCAP_SHARED_CHECKPOINTS/Llama-3.2-11B-Vision-Instruct \
        --random-weights --json serve_bench.json                      # GPU (scripts/serve_bench_device.sh)
    python scripts/serve_bench.py --model-dir demo/model --levels 1,2 --requests-per-level 4,8 \
        --max-tokens 16 --image-size 64 --max-num-seqs 4              # CPU smoke run (~1-2 min)

Contract:
- Starts `python jobs/serve.py --model DIR --max-num-seqs N --port <free port> [--random-weights]` in its own
  process session (as users start it: Ray Serve unless --no-ray), waits for `GET /health` = 200 (model loaded,
  graphs captured), then per concurrency level C sends that level's requests (default max(32, 8C)) from C
  client threads, each sending back to back: streamed `/v1/chat/completions`, one distinct random-ish JPEG
  per request as a data: URL, one fixed question, greedy, `max_tokens`, `stream_options.include_usage`.
  A warm-up wave (C = the largest level, not recorded) runs first.
- Per request: TTFT = arrival of the first delta chunk (the server sends it as soon as the first token is
  sampled, the token's text right behind it); TPOT = (arrival of the finish chunk - TTFT) / (completion
  tokens - 1); latency; tokens from the usage chunk. The endpoint has no ignore-EOS extension, so tokens are
  what was generated (random weights rarely hit EOS). Per level: requests/s and output tokens/s over the
  level's wall time, p50/p99 (nearest rank) of TTFT / TPOT / latency, errors.
- The server is then stopped as Ctrl-C stops it (SIGINT: Serve drains and shuts down, Ray exits); whatever of
  its session is still there after 10 s gets SIGTERM, then SIGKILL (JSON `server.stop`). Then the offline
  engine runs the same bodies as the compared level (the largest; same prompt ids and pixels, through the
  same request parser and codec as the server), batch `--max-num-seqs`, in a child process
  (`--offline-worker`) so a hang is bounded; output tokens/s and the ratio serve/offline are reported.
  The server's and the child's output go to `--server-log` (default: the JSON's name + .server.log).
- Every phase has its own timeout, all within `--budget-s`; the JSON (`--json`) is rewritten after every
  phase, so a later failure keeps the earlier results. Exit status 0 when every phase ran without errors.
Only the standard library talks HTTP (the GPU machine has no httpx).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the offline worker imports the project (not installed on the GPU machine)

from pipeline.serve.loadgen import percentile  # noqa: E402  (nearest rank; loadgen imports httpx only to send)

QUESTION = "Describe this image in one sentence."


def jpeg_url(size: int, seed: int) -> str:
    """A smooth random image (an upscaled 8x8 colour grid + mild noise): compresses like a photo, not like noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    px = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def make_bodies(model: str, n: int, size: int, max_tokens: int) -> list[dict]:
    return [{"model": model, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
             "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
                 {"type": "image_url", "image_url": {"url": jpeg_url(size, seed)}},
                 {"type": "text", "text": QUESTION}]}]} for seed in range(n)]


# --- the client -------------------------------------------------------------------------------------------
def stream_one(conn: http.client.HTTPConnection, body: bytes) -> dict:
    """One streamed request on a kept-alive connection: timings (seconds from send) and usage, or an error."""
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        return {"error": f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"}
    first = content = last = None
    usage, error = None, None
    for line in iter(resp.readline, b""):
        if not line.startswith(b"data: "):
            continue
        now = time.perf_counter() - t0
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            error = f"stream error: {chunk['error'].get('message')}"
        for choice in chunk.get("choices") or ():
            first = now if first is None else first
            if content is None and choice["delta"].get("content"):
                content = now
            if choice.get("finish_reason") is not None:
                last = now
        usage = chunk.get("usage") or usage
    resp.read()  # the chunked body's end, so the connection can carry the next request
    total = time.perf_counter() - t0
    if error or usage is None or first is None or last is None:
        return {"error": error or f"incomplete stream (first={first}, last={last}, usage={usage})"}
    tokens = usage["completion_tokens"]
    return {"ttft": first, "ttft_content": content, "latency": total, "tokens": tokens,
            "tpot": (last - first) / (tokens - 1) if tokens > 1 else None}


def run_level(port: int, bodies: list[bytes], concurrency: int, timeout_s: float, read_timeout_s: float) -> dict:
    """`concurrency` threads send `bodies` back to back; none starts a request after `timeout_s`."""
    results: list[dict] = []
    lock, nxt = threading.Lock(), iter(range(len(bodies)))
    deadline = time.perf_counter() + timeout_s

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=read_timeout_s)
        while time.perf_counter() < deadline:
            with lock:
                k = next(nxt, None)
            if k is None:
                break
            try:
                r = stream_one(conn, bodies[k])
            except (OSError, http.client.HTTPException, ValueError) as exc:
                r = {"error": f"{type(exc).__name__}: {exc}"}
                conn.close()  # reconnects on the next request
            with lock:
                results.append(r)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:  # each ends by the deadline plus one request's read timeout at most
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    tokens = sum(r["tokens"] for r in ok)

    def pct(key: str, q: float) -> float | None:
        ms = [r[key] * 1e3 for r in ok if r.get(key) is not None]
        return round(percentile(ms, q), 2) if ms else None

    return {"concurrency": concurrency, "requests": len(bodies), "sent": len(results), "ok": len(ok),
            "errors": len(errors), "first_errors": errors[:3], "timed_out": len(results) < len(bodies),
            "wall_s": round(wall, 3), "requests_per_s": round(len(ok) / wall, 3),
            "output_tokens_per_s": round(tokens / wall, 1), "completion_tokens": tokens,
            "mean_tokens": round(tokens / len(ok), 1) if ok else None,
            **{f"{k}_p{q}_ms": pct(k, q) for k in ("ttft", "tpot", "latency") for q in (50, 99)},
            "ttft_content_p50_ms": pct("ttft_content", 50)}


# --- the server -------------------------------------------------------------------------------------------
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


def start_server(args, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "jobs" / "serve.py"), "--model", args.model_dir, "--port", str(port),
           "--max-num-seqs", str(args.max_num_seqs)] + (["--random-weights"] if args.random_weights else []) \
        + (["--no-ray"] if args.no_ray else []) + args.serve_arg
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


# --- the offline engine (child process) -------------------------------------------------------------------
def offline_worker(args) -> dict:
    """The compared level's bodies through the engine directly: parsed and prepared as the server does
    (service.py `_prepare` / `engine_requests`), generated by `Engine.generate` at batch `max_num_seqs` with
    the batch job's engine settings (no decode-stall bound), after a warm-up wave."""
    import torch

    from ops.sampling import SamplingParams
    from pipeline.context_len import resolve_max_model_len
    from pipeline.engine.builder import build_engine
    from pipeline.engine.config import EngineConfig
    from pipeline.engine.request import Request
    from pipeline.job_config import JobConfig
    from pipeline.media_codec import codec_for
    from pipeline.serve.messages import MediaLimits, split_media
    from pipeline.serve.schemas import parse_request

    # max_model_len: the server's (from /v1/models); without one, resolved as the server resolves it
    # (its default --max-tokens, 512, as the generation bound).
    job = resolve_max_model_len(JobConfig(model=args.model_dir, input="-", output="-", prompt=None,
                                          messages_column="messages", max_new_tokens=512,
                                          max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs))
    codec = codec_for(args.model_dir, job)
    limits = MediaLimits(max_images=codec.max_images_per_request)
    prepared = []
    for body in make_bodies("m", args.offline_requests, args.image_size, args.max_tokens):
        req = parse_request(json.dumps(body).encode(), 8)
        messages, images, _ = split_media(req.messages, limits)
        ids, blob = codec.prepare({"messages": messages, "image": images, "video": None})
        prepared.append((ids, codec.unpack({"media": [blob]}, 0), req.stop_strings))
    cuda = torch.cuda.is_available()
    cfg = EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=job.max_model_len, cuda_graphs=True,
                       dtype="bfloat16" if cuda else "float32", max_images_per_request=codec.max_images_per_request)
    t0 = time.perf_counter()
    engine = build_engine(Path(args.model_dir), cfg, random_weights=args.random_weights)
    build_s = time.perf_counter() - t0

    def requests(tag: str, n: int) -> list:
        return [Request(f"{tag}{i}", list(ids), media, SamplingParams(max_new_tokens=args.max_tokens, stop=stop))
                for i, (ids, media, stop) in enumerate(prepared[:n])]

    list(engine.generate(requests("w", min(len(prepared), args.max_num_seqs))))
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = list(engine.generate(requests("r", len(prepared))))
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = sum(c.num_generated_tokens for c in done if c.error is None)
    return {"requests": len(prepared), "errors": sum(c.error is not None for c in done), "wall_s": round(secs, 3),
            "requests_per_s": round(len(done) / secs, 3), "output_tokens_per_s": round(tokens / secs, 1),
            "completion_tokens": tokens, "mean_tokens": round(tokens / max(1, len(done)), 1),
            "prompt_tokens": len(prepared[0][0]), "slots": engine.runner.num_slots, "build_s": round(build_s, 1),
            "max_model_len": job.max_model_len, "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_offline(args, n: int, max_model_len: int | None, timeout_s: float, log) -> dict:
    out = Path(args.json or "serve_bench.json").with_suffix(".offline.json")
    cmd = [sys.executable, __file__, "--offline-worker", str(out), "--model-dir", args.model_dir, "--max-tokens",
           str(args.max_tokens), "--image-size", str(args.image_size), "--max-num-seqs", str(args.max_num_seqs),
           "--offline-requests", str(n)] + (["--max-model-len", str(max_model_len)] if max_model_len else []) \
        + (["--random-weights"] if args.random_weights else [])
    out.unlink(missing_ok=True)
    # The replica's OpenMP setting (Ray gives a num_cpus=1 actor one thread): on a busy CPU, more threads than
    # the replica had would make the two runs differ by oversubscription, not by serving.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=ROOT, check=True, env=env)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"offline engine run not done after {timeout_s:.0f} s") from None
    result = json.loads(out.read_text())
    out.unlink()
    return result


# --- the driver -------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(ROOT / "demo" / "model"), help="checkpoint (metadata) directory")
    p.add_argument("--random-weights", action="store_true", help="random weights at the checkpoint's shapes")
    p.add_argument("--levels", type=_ints, default=[1, 16, 64], help="client concurrencies, e.g. 1,16,64")
    p.add_argument("--requests-per-level", type=_ints, help="one number for all levels or one per level "
                   "(default max(32, 8 x concurrency))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--image-size", type=int, default=560, help="square JPEG side (560: one Mllama tile)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="server slots and the offline batch")
    p.add_argument("--serve-arg", action="append", default=[], help="extra jobs/serve.py flag (repeatable; "
                   "e.g. --serve-arg=--max-decode-stall-ms=0)")
    p.add_argument("--no-ray", action="store_true", help="serve with uvicorn in one process (no Ray Serve)")
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--json", help="write the results here (rewritten after every phase)")
    p.add_argument("--server-log", help="the server's output (default: next to --json, or serve_bench.server.log)")
    p.add_argument("--budget-s", type=float, default=520, help="all phases together")
    p.add_argument("--startup-timeout", type=float, default=330, help="until GET /health is ready")
    p.add_argument("--level-timeout", type=float, default=120, help="no new request after this, per level")
    p.add_argument("--read-timeout", type=float, default=60, help="socket timeout of one request")
    p.add_argument("--offline-timeout", type=float, default=240)
    p.add_argument("--offline-worker", help=argparse.SUPPRESS)
    p.add_argument("--offline-requests", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-model-len", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    counts = a.requests_per_level or [max(32, 8 * c) for c in a.levels]
    if len(counts) == 1:
        counts = counts * len(a.levels)
    if len(counts) != len(a.levels) or min(counts + a.levels) < 1:
        p.error("--requests-per-level: one positive number, or one per level")
    a.counts = counts
    return a


def table(results: dict) -> str:
    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    rows = ["| concurrency | requests (ok/err) | req/s | output tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) "
            "| latency p50 / p99 (ms) | mean tokens |", "|---|---|---|---|---|---|---|---|"]
    for r in results["levels"]:
        rows.append(f"| {r['concurrency']} | {r['ok']}/{r['errors']} | {f(r['requests_per_s'], '{:.2f}')} | "
                    f"{f(r['output_tokens_per_s'], '{:.0f}')} | {f(r['ttft_p50_ms'], '{:.0f}')} / "
                    f"{f(r['ttft_p99_ms'], '{:.0f}')} | {f(r['tpot_p50_ms'])} / {f(r['tpot_p99_ms'])} | "
                    f"{f(r['latency_p50_ms'], '{:.0f}')} / {f(r['latency_p99_ms'], '{:.0f}')} | "
                    f"{f(r['mean_tokens'])} |")
    o = results.get("offline")
    if o:
        rows.append(f"| offline engine, batch {o['slots']} | {o['requests'] - o['errors']}/{o['errors']} | "
                    f"{o['requests_per_s']:.2f} | {o['output_tokens_per_s']:.0f} | - | - | - | {o['mean_tokens']} |")
    if results.get("ratio") is not None:
        rows.append(f"\nserve (concurrency {results['levels'][-1]['concurrency']}) / offline output tokens/s: "
                    f"**{results['ratio']:.2f}** (criterion: >= 0.80)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.offline_worker:
        Path(args.offline_worker).write_text(json.dumps(offline_worker(args)))
        return 0
    t_start = time.perf_counter()

    def left(cap: float) -> float:  # a phase's timeout: its own cap, within what the budget has left
        return max(1.0, min(cap, args.budget_s - (time.perf_counter() - t_start)))

    results: dict = {"args": {k: v for k, v in vars(args).items() if not k.startswith("offline")}, "server": {},
                     "levels": [], "offline": None, "ratio": None, "problems": []}
    json_path = Path(args.json) if args.json else None

    def save() -> None:
        if json_path:
            json_path.write_text(json.dumps(results, indent=2))

    log_path = Path(args.server_log or (json_path.with_suffix(".server.log") if json_path
                                        else "serve_bench.server.log"))

    def problem(phase: str, exc: BaseException) -> None:
        msg = f"{phase}: {type(exc).__name__}: {exc}"
        print(f"[serve_bench] FAILED {msg}", flush=True)
        results["problems"].append(msg)

    levels = sorted(zip(args.levels, args.counts, strict=True))
    t0 = time.perf_counter()
    pool = make_bodies("", max(n for _, n in levels), args.image_size, args.max_tokens)
    print(f"[serve_bench] {len(pool)} request bodies ({len(json.dumps(pool[0])) / 1024:.0f} KiB each) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    port, max_model_len = free_port(), args.max_model_len
    with open(log_path, "w") as log:
        proc = start_server(args, port, log)
        try:
            ready_s = wait_ready(proc, port, left(args.startup_timeout))
            _, models = get_json(port, "/v1/models")
            card = models["data"][0]
            max_model_len = max_model_len or card.get("max_model_len")
            results["server"].update(ready_s=round(ready_s, 1), model=card["id"], max_model_len=max_model_len,
                                     port=port, ray=not args.no_ray)
            print(f"[serve_bench] server ready in {ready_s:.0f} s: {card['id']}, max_model_len {max_model_len}",
                  flush=True)
            bodies = [json.dumps(dict(b, model=card["id"])).encode() for b in pool]
            warm_c = levels[-1][0]
            warm = run_level(port, bodies[:warm_c], warm_c, left(args.level_timeout), args.read_timeout)
            results["server"]["warmup"] = {k: warm[k] for k in ("ok", "errors", "wall_s", "first_errors")}
            print(f"[serve_bench] warm-up: {warm['ok']} ok, {warm['errors']} errors in {warm['wall_s']:.1f} s "
                  f"{warm['first_errors'][:1]}", flush=True)
            save()
            for c, n in levels:
                r = run_level(port, bodies[:n], c, left(args.level_timeout), args.read_timeout)
                results["levels"].append(r)
                save()
                print(f"[serve_bench] concurrency {c}: {r['ok']}/{n} ok in {r['wall_s']:.1f} s, "
                      f"{r['requests_per_s']:.2f} req/s, {r['output_tokens_per_s']:.0f} tok/s, TTFT p50 "
                      f"{r['ttft_p50_ms']} ms, TPOT p50 {r['tpot_p50_ms']} ms {r['first_errors'][:1]}", flush=True)
        except Exception as exc:  # noqa: BLE001 - record it; the server is stopped and later phases still run
            problem("serve", exc)
            print(log_tail(log_path), flush=True)
        finally:
            stop = stop_server(proc, timeout_s=max(20.0, min(90.0, left(90.0))))
            results["server"]["stop"] = stop
            print(f"[serve_bench] server stopped: {stop}", flush=True)
            if stop["left_alive"]:
                results["problems"].append(f"server processes left alive in group {proc.pid}")
            save()

        if not args.skip_offline:
            try:
                print(f"[serve_bench] offline engine: {levels[-1][1]} requests, batch {args.max_num_seqs}", flush=True)
                o = run_offline(args, levels[-1][1], max_model_len, left(args.offline_timeout), log)
                results["offline"] = o
                print(f"[serve_bench] offline: {o}", flush=True)
                served = next((r for r in results["levels"] if r["concurrency"] == levels[-1][0]), None)
                if served and o["output_tokens_per_s"] > 0:
                    results["ratio"] = round(served["output_tokens_per_s"] / o["output_tokens_per_s"], 3)
            except Exception as exc:  # noqa: BLE001
                problem("offline", exc)
                print(log_tail(log_path), flush=True)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"\n{Path(args.model_dir).name}, {args.image_size}x{args.image_size} JPEG, max_tokens {args.max_tokens}, "
          f"max_num_seqs {args.max_num_seqs}, {'uvicorn (no Ray)' if args.no_ray else 'Ray Serve'}, "
          f"total {results['total_s']:.0f} s\n")
    print(table(results), flush=True)
    for msg in results["problems"]:
        print(f"problem: {msg}")
    bad = results["problems"] or any(r["errors"] or r["timed_out"] for r in results["levels"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
