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
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

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
port, conc, total = map(int, sys.argv[1:4])
body = json.dumps({"model": "model", "stream": True, "max_tokens": 64, "temperature": 0,
                   "messages": [{"role": "user", "content": "Say something."}]}).encode()
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

    def __init__(self, slots: int, decode_s: float, fixed_s: float, per_s: float, host_fraction: float = 0.0):
        self.num_slots, self.max_len, self.device = slots, 4096, torch.device("cpu")
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)
        self.decode_s, self.fixed_s, self.per_s = decode_s, fixed_s, per_s
        self.host_fraction = host_fraction

    def check(self, prompt_ids, media) -> None:
        return None

    def prefill(self, prompts, media, slots) -> torch.Tensor:
        hold(self.fixed_s + self.per_s * len(prompts), self.host_fraction)
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
    ap.add_argument("--model-dir", default=str(ROOT / "demo" / "model"), help="tokenizer and chat template")
    args = ap.parse_args(argv)
    stall = args.max_decode_stall_ms or None
    tok = Tokenizer.from_dir(args.model_dir)
    eos = (tok.encode("<|im_end|>")[0],)

    def engine(stall_ms: float | None) -> Engine:
        runner = SleepRunner(args.slots, args.decode_ms / 1e3, args.fixed_ms / 1e3, args.per_request_ms / 1e3,
                             args.host_fraction)
        cfg = EngineConfig(max_num_seqs=args.slots, cuda_graphs=False, max_decode_stall_ms=stall_ms)
        return Engine(runner, tok, cfg, eos)

    offline = engine(None)  # the batch job's settings
    params = SamplingParams(max_new_tokens=64, ignore_eos=True)
    t0 = time.perf_counter()
    done = list(offline.generate(Request(str(i), tok.encode("Say something."), None, params)
                                 for i in range(args.requests)))
    offline_s = time.perf_counter() - t0

    import uvicorn

    cfg = ServeConfig(model=args.model_dir, max_num_seqs=args.slots, dtype="float32", cuda_graphs=False,
                      max_decode_stall_ms=stall, engine_report_s=5.0)
    served = engine(stall)
    service = ChatService(cfg, engine=served)
    server = uvicorn.Server(uvicorn.Config(build_app(service), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    cpu0, t0 = time.process_time(), time.perf_counter()
    subprocess.run([sys.executable, "-c", CLIENTS, str(port), str(args.concurrency), str(args.requests)], check=True)
    serve_s, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server.should_exit = True
    thread.join(10)
    service.shutdown()
    tokens = served.stats["generated_tokens"]

    serve_rate, offline_rate = tokens / serve_s, sum(c.num_generated_tokens for c in done) / offline_s
    print(f"[serve_mock_bench] concurrency {args.concurrency}, stall limit {stall} ms, host fraction "
          f"{args.host_fraction}: serve {serve_rate:.0f} tok/s, "
          f"offline {offline_rate:.0f} tok/s, ratio {serve_rate / offline_rate:.2f}; server CPU "
          f"{1e3 * cpu / max(tokens, 1):.2f} ms per streamed token; {served.stats['admissions']} admissions of "
          f"{served.stats['admitted'] / max(served.stats['admissions'], 1):.1f} requests", flush=True)


if __name__ == "__main__":
    main()
