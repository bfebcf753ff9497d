"""The online endpoint's scheduling and HTTP overhead without a GPU: the real app and engine over a mock runner
whose prefill and decode *sleep* for what they cost on an H200 (sleep releases the GIL, as a CUDA sync does).

    python scripts/serve_mock_bench.py                            # concurrency 64, --max-decode-stall-ms 150
    python scripts/serve_mock_bench.py --max-decode-stall-ms 0    # no stall limit

Defaults are Mllama-11B's measured costs on one H200 (BENCHMARKS.md, session 7): prefill 25 ms + 39 ms per
request, decode step 16.5 ms at width 64. The app (`pipeline.serve.app`, uvicorn in this process, no Ray) serves
`--requests` streamed text requests of 64 tokens from `--concurrency` clients in a child process (stdlib
http.client, so the clients do not share this process's GIL); the same engine settings have first run the
same number of requests offline (`Engine.generate`, no stall limit). Prints both rates, their ratio, the server
process's CPU time per streamed token and the replica's `[engine]` lines. What it cannot show: the real
engine's own Python and launch time, which shares the GIL with the event loop (2-core CPU here, 256 requests:
ratio 0.90 at the default limit and 1.07 without one, where the H200 measured 0.73 and 0.79; so the
scheduler and the HTTP path alone are not what holds the endpoint below the offline engine).
`--host-fraction 0.3` spends 30% of every prefill and decode busy in Python (holding the GIL, as launches do):
the endpoint still streamed ~910 tok/s (2-core CPU, 2026-12-01), as with 0, so the event loop's share of the
GIL did not slow the engine here either. Handing a step's tokens to the loop in one `call_soon_threadsafe`
instead of one per stream measured the same (912-918 tok/s) and was not kept.
`--ray-serve` runs the app as jobs/serve.py does (a Serve replica behind Serve's HTTP proxy) and `--image-size
560` sends each request one JPEG that the replica's codec preprocesses. Measured 2026-12-01 (2-core CPU, Mllama
metadata, host fraction 0.3, concurrency 64, 256 requests): in-process 0.88 at the default limit, 1.02 without;
Ray Serve 0.81-0.84 and 0.90. Under Serve the engine thread's decode steps take longer (p50 19.2-19.9 ms, p90
25.9 against 17.5 / 20.0 in-process, for a 16.5 ms mock step) while the replica's other threads hold the GIL
~16% of the time (py-spy --gil) and the machine is half idle; `sys.setswitchinterval(2e-4)` and
RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 (RAY_SERVE_* variables are passed on to the replica) changed
nothing. So Serve's threads in the replica slow the engine's own Python; an engine in its own process would not
share that GIL.
Calibration warning (session 12, H200 step traces, BENCHMARKS.md): in the Serve replica a one-request admission
cost 104 ms (2: 149, 3: 183), against this mock's 25 + 39 = 64 ms, and the endpoint measured 0.49 of offline
where the mock says 0.88. Given the replica's costs (`--fixed-ms 60 --per-request-ms 41 --decode-ms 21.9`, 192
requests, 2-core CPU) the mock serves 595 tok/s (the H200 replica: 522) in admissions of 1.8 requests at 135 ms,
but its offline run pays the same 60 ms fixed cost (859 tok/s; the H200 offline engine, ~25 ms fixed: 1,072), so
its ratio reads 0.69: the replica's fixed admission cost, not the scheduling, is what the mock is missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.tokenizer import Tokenizer  # noqa: E402
from ops.sampling import SamplingParams  # noqa: E402
from pipeline.engine.config import EngineConfig  # noqa: E402
from pipeline.engine.engine import Engine  # noqa: E402
from pipeline.engine.request import Request  # noqa: E402
from pipeline.serve.app import build_app  # noqa: E402
from pipeline.serve.service import ChatService, ServeConfig  # noqa: E402

TOKEN = 362  # an ordinary token of the Qwen2 vocabulary; logits are one-hot over [0, TOKEN]
CLIENTS = r"""
import http.client, json, sys, threading
port, conc, total, size = map(int, sys.argv[1:5])
content = "Say something."
if size:  # one smooth JPEG, as the GPU bench sends
    from serve_bench_client import jpeg_url
    content = [{"type": "image_url", "image_url": {"url": jpeg_url(size, 0)}}, {"type": "text", "text": content}]
body = json.dumps({"model": "model", "stream": True, "max_tokens": 64, "temperature": 0,
                   "messages": [{"role": "user", "content": content}]}).encode()
left = [total]
lock = threading.Lock()
def client():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        for _ in iter(resp.readline, b""):
            pass
threads = [threading.Thread(target=client) for _ in range(conc)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def hold(seconds: float, host_fraction: float) -> None:
    """`seconds` of engine time: the first `host_fraction` of it busy in Python (holding the GIL, as kernel
    launches do), the rest asleep (the GIL released, as a CUDA sync releases it)."""
    end = time.perf_counter() + seconds * host_fraction
    while time.perf_counter() < end:
        pass
    time.sleep(seconds * (1 - host_fraction))


class SleepRunner:
    """The runner interface (pipeline/engine/runners) with sleeps for GPU time and a tiny vocabulary."""

    def __init__(self, slots: int, decode_s: float, fixed_s: float, per_s: float, host_fraction: float = 0.0,
                 vision_s: float = 0.0):
        self.num_slots, self.max_len, self.device = slots, 4096, torch.device("cpu")
        self.vision_s = vision_s  # the part of per_s that `encode` takes out of a staged admission
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)
        self.decode_s, self.fixed_s, self.per_s = decode_s, fixed_s, per_s
        self.host_fraction = host_fraction

    def check(self, prompt_ids, media) -> None:
        return None

    def encode(self, media) -> torch.Tensor:
        hold(self.vision_s, self.host_fraction)
        return torch.zeros(1, 1, 1)  # one image's "states"

    def prefill(self, prompts, media, slots, encoded=None) -> torch.Tensor:
        per = self.per_s - (self.vision_s if encoded is not None else 0.0)
        hold(self.fixed_s + per * len(prompts), self.host_fraction)
        return torch.nn.functional.one_hot(torch.full((len(prompts),), TOKEN), TOKEN + 1).float()

    def decode(self, batch: int) -> torch.Tensor:
        hold(self.decode_s, self.host_fraction)
        return torch.nn.functional.one_hot(torch.full((batch,), TOKEN), TOKEN + 1).float()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--max-decode-stall-ms", type=float, default=150.0, help="0: no limit")
    ap.add_argument("--decode-ms", type=float, default=16.5)
    ap.add_argument("--fixed-ms", type=float, default=25.0)
    ap.add_argument("--per-request-ms", type=float, default=39.0)
    ap.add_argument("--host-fraction", type=float, default=0.0, help="share of each prefill and decode spent "
                    "busy in Python, holding the GIL (the real engine's launches); the rest sleeps")
    ap.add_argument("--stage-vision-images", type=int, default=0, help="the served engine stages vision (as "
                    "jobs/serve.py --stage-vision-images N); the offline engine never does")
    ap.add_argument("--vision-ms", type=float, default=34.0, help="the part of --per-request-ms that is the vision "
                    "tower (moved out of the admission when staged; 34 of 39 is an estimate, not a measurement)")
    ap.add_argument("--model-dir", default=str(ROOT / "demo" / "model"), help="tokenizer and chat template")
    ap.add_argument("--image-size", type=int, default=0, help="each request carries one JPEG of this size (as "
                    "a data: URL), preprocessed by the model's codec in the server; 0: text only")
    ap.add_argument("--engine-process", action="store_true", help="the served engine in a process of its own "
                    "(pipeline/serve/engine_process.py), as jobs/serve.py --engine-process runs it")
    ap.add_argument("--ray-serve", action="store_true", help="serve through Ray Serve (proxy + replica actor, as "
                    "jobs/serve.py runs) instead of uvicorn in this process")
    args = ap.parse_args(argv)
    stall = args.max_decode_stall_ms or None
    tok = Tokenizer.from_dir(args.model_dir)

    offline = mock_engine(args, tok, None)  # the batch job's settings
    params = SamplingParams(max_new_tokens=64, ignore_eos=True)
    t0 = time.perf_counter()
    done = list(offline.generate(Request(str(i), tok.encode("Say something."), None, params)
                                 for i in range(args.requests)))
    offline_rate = sum(c.num_generated_tokens for c in done) / (time.perf_counter() - t0)

    cfg = ServeConfig(model=args.model_dir, served_model_name="model", max_num_seqs=args.slots, dtype="float32",
                      cuda_graphs=False, max_decode_stall_ms=stall, engine_report_s=5.0, max_pending=4 * args.slots)
    server = (OnRayServe if args.ray_serve else InProcess)(args, cfg)
    try:
        before, t0 = server.stats(), time.perf_counter()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(ROOT / "scripts"), str(ROOT))))
        subprocess.run([sys.executable, "-c", CLIENTS, str(server.port), str(args.concurrency), str(args.requests),
                        str(args.image_size)], check=True, env=env)
        serve_s, after = time.perf_counter() - t0, server.stats()
    finally:
        server.stop()
    d = {k: after[k] - before[k] for k in ("cpu_s", "generated_tokens", "admissions", "admitted", "prefill_s")}
    tokens, admissions = d["generated_tokens"], max(d["admissions"], 1)
    nominal = (d["admissions"] * args.fixed_ms + d["admitted"] * args.per_request_ms) / 1e3
    serve_rate = tokens / serve_s
    where = "Ray Serve" if args.ray_serve else "in-process uvicorn"
    where += ", engine process" if args.engine_process else ""
    where += f", vision staged {args.stage_vision_images}/step" if args.stage_vision_images else ""
    print(f"[serve_mock_bench] {where}, concurrency "
          f"{args.concurrency}, image {args.image_size or 'none'}, stall limit {stall} ms, host fraction "
          f"{args.host_fraction}: serve {serve_rate:.0f} tok/s, offline {offline_rate:.0f} tok/s, ratio "
          f"{serve_rate / offline_rate:.2f}; server process CPU {1e3 * d['cpu_s'] / max(tokens, 1):.2f} ms per "
          f"streamed token; {d['admissions']} admissions of {d['admitted'] / admissions:.1f} requests taking "
          f"{1e3 * d['prefill_s'] / admissions:.0f} ms each ({d['prefill_s'] / max(nominal, 1e-9):.2f}x the mock's "
          f"cost); decode gaps p50/p99/max {after['gaps_ms']} ms (mock step {args.decode_ms} ms)", flush=True)


def mock_engine(args: argparse.Namespace, tok: Tokenizer, stall_ms: float | None, stage: int = 0) -> Engine:
    runner = SleepRunner(args.slots, args.decode_ms / 1e3, args.fixed_ms / 1e3, args.per_request_ms / 1e3,
                         args.host_fraction, args.vision_ms / 1e3)
    cfg = EngineConfig(max_num_seqs=args.slots, cuda_graphs=False, max_decode_stall_ms=stall_ms,
                       stage_vision_images=stage)
    return Engine(runner, tok, cfg, ())  # the mock never samples a stop token: every answer runs to max_tokens


def child_engine(args: argparse.Namespace, stall_ms: float | None) -> Engine:
    """The factory an engine process runs (pipeline/serve/engine_process.py resolves it by this file's path)."""
    return mock_engine(args, Tokenizer.from_dir(args.model_dir), stall_ms, args.stage_vision_images)


def served_engine(args: argparse.Namespace, cfg: ServeConfig) -> tuple[Any, Engine | None]:
    """(what ChatService gets, the engine when it runs in this process)."""
    if args.engine_process:
        from pipeline.serve.engine_process import ProcessDriver
        from pipeline.serve.stream_engine import AsyncEngine

        driver = ProcessDriver(f"{Path(__file__).resolve()}:child_engine", (args, cfg.max_decode_stall_ms),
                               Tokenizer.from_dir(args.model_dir), cfg.engine_report_s)
        return AsyncEngine(driver), None
    engine = mock_engine(args, Tokenizer.from_dir(args.model_dir), cfg.max_decode_stall_ms, args.stage_vision_images)
    return engine, engine


def engine_stats(service: ChatService, engine: Engine | None) -> dict:
    """The replica's process CPU time and the engine's counters (token gaps only from an engine in this process)."""
    gaps = engine.timer.gaps_ms() if engine is not None else None
    return {"cpu_s": time.process_time(), **service.engine.stats,
            "gaps_ms": None if gaps is None else tuple(round(g, 1) for g in gaps)}


class InProcess:
    """The app on uvicorn in a thread of this process (no Ray)."""

    def __init__(self, args: argparse.Namespace, cfg: ServeConfig):
        import uvicorn

        served, self.engine = served_engine(args, cfg)
        self.service = ChatService(cfg, engine=served)
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.service), host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stats(self) -> dict:
        return engine_stats(self.service, self.engine)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.shutdown()


class OnRayServe:
    """The app as a Ray Serve ingress deployment (one replica) behind Serve's HTTP proxy, as jobs/serve.py
    runs it; the replica builds the same mock engine."""

    def __init__(self, args: argparse.Namespace, cfg: ServeConfig):
        import socket

        import ray
        from ray import serve

        @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=cfg.max_pending + 16)
        @serve.ingress()
        class MockReplica:
            def __init__(self, args: argparse.Namespace, cfg: ServeConfig):
                served, self.engine = served_engine(args, cfg)
                self.service = ChatService(cfg, engine=served)

            def __serve_build_asgi_app__(self):
                return build_app(self.service)

            def stats(self) -> dict:
                return engine_stats(self.service, self.engine)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # Serve's own knobs (RAY_SERVE_*) set here reach the replica as well.
        env = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **env}}, logging_level="WARNING")
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.handle = serve.run(MockReplica.bind(args, cfg), name="mock", route_prefix="/")

    def stats(self) -> dict:
        return self.handle.stats.remote().result()

    def stop(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()

if __name__ == "__main__":
    main()
