"""A bounded load generator for any OpenAI-compatible `/v1/chat/completions` (this endpoint or another).

    python -m pipeline.serve.loadgen --url http://127.0.0.1:8000 --requests 300 --concurrency 16

Contract:
- `default_bodies(model, n, ...)` builds `n` request bodies: a deterministic mix of text-only questions and
  questions about one small random PNG (every `image_every`-th request; sizes vary), greedy, small
  `max_tokens`. `run(url, bodies, concurrency)` sends each body exactly once, non-streamed, from
  `concurrency` client threads sharing one `httpx.Client`, and returns once every request has answered or
  failed: it stops by itself (bounded by the number of bodies and `timeout_s`, httpx's per-read/write timeout), never
  retries (a 429 counts as an error) and never raises for a bad answer.
- Every answer is checked by `check_response`: HTTP 200 and a well-formed `chat.completion` (id, object,
  created, model, one choice per `n` with its index, an assistant message whose content is a string,
  `finish_reason` stop/length, "length" only at `max_tokens`, `usage` consistent with itself and with
  `max_tokens`). Any other outcome (a 4xx/5xx, a transport error or timeout, a malformed body) is an error,
  listed in `Report.errors`.
- `Report` holds per-request latencies (seconds, client side, from send to the parsed body) and the
  completion tokens of the good answers; `summary()` gives requests/s and output tokens/s over the run's
  wall time and p50/p99 latency (nearest rank). It measures; it asserts nothing.
- `run` needs `httpx` (the test extra has it; so does the `openai` client). The CLI exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

QUESTIONS = ("What is in the picture?", "Describe the image in one sentence.", "What colours do you see?",
             "Is there any text in it?")
TEXT_QUESTIONS = ("Say hello.", "Name a colour.", "What is two plus two?", "Write one word.")


def _png(width: int, height: int, seed: int) -> bytes:
    import numpy as np
    import PIL.Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def default_bodies(model: str, n: int, *, max_tokens: int = 8, image_every: int = 2,
                   distinct_images: int = 8) -> list[dict]:
    """`n` greedy request bodies: request k asks about a small PNG when k % image_every == 0, else text only;
    `max_tokens` cycles over 1..max_tokens so answers end by length and (sometimes) by a stop token."""
    urls = ["data:image/png;base64," + base64.b64encode(_png(32 + 8 * (i % 5), 24 + 8 * (i % 3), seed=i)).decode()
            for i in range(distinct_images)]
    bodies = []
    for k in range(n):
        if image_every > 0 and k % image_every == 0:
            content: str | list[dict] = [{"type": "image_url", "image_url": {"url": urls[k % len(urls)]}},
                                         {"type": "text", "text": QUESTIONS[k % len(QUESTIONS)]}]
        else:
            content = TEXT_QUESTIONS[k % len(TEXT_QUESTIONS)]
        bodies.append({"model": model, "messages": [{"role": "user", "content": content}],
                       "max_tokens": 1 + k % max_tokens, "temperature": 0})
    return bodies


def check_response(status: int, body: object, request: dict) -> str | None:
    """None when `body` is a well-formed 200 answer to `request`, else what is wrong with it."""
    if status != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        return f"HTTP {status}: {message or str(body)[:200]}"
    if not isinstance(body, dict):
        return f"body is not a JSON object: {str(body)[:200]}"
    n = request.get("n", 1)
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    problems = []
    if body.get("object") != "chat.completion":
        problems.append(f"object={body.get('object')!r}")
    if not (isinstance(body.get("id"), str) and body["id"]):
        problems.append("no id")
    if not isinstance(body.get("created"), int):
        problems.append("created is not an int")
    if body.get("model") != request.get("model"):
        problems.append(f"model={body.get('model')!r}")
    choices = body.get("choices")
    if not isinstance(choices, list) or [c.get("index") for c in choices if isinstance(c, dict)] != list(range(n)):
        problems.append(f"choices are not indexed 0..{n - 1}")
    else:
        for c in choices:
            message = c.get("message")
            if not (isinstance(message, dict) and message.get("role") == "assistant"
                    and isinstance(message.get("content"), str)):
                problems.append(f"choice {c['index']}: bad message {message!r}")
            if c.get("finish_reason") not in ("stop", "length"):
                problems.append(f"choice {c['index']}: finish_reason={c.get('finish_reason')!r}")
    usage = body.get("usage")
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    if not (isinstance(usage, dict) and all(isinstance(usage.get(k), int) for k in keys)):
        problems.append(f"bad usage {usage!r}")
    else:
        if usage["prompt_tokens"] < 1 or usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
            problems.append(f"inconsistent usage {usage}")
        if not n <= usage["completion_tokens"] <= (limit * n if limit else math.inf):
            problems.append(f"completion_tokens={usage['completion_tokens']} outside [{n}, {limit} x {n}]")
        if (n == 1 and limit and isinstance(choices, list) and choices and isinstance(choices[0], dict)
                and choices[0].get("finish_reason") == "length" and usage["completion_tokens"] != limit):
            problems.append(f"finish_reason 'length' after {usage['completion_tokens']} of {limit} tokens")
    return "; ".join(problems) or None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Report:
    requests: int
    concurrency: int
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # of the good answers
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)  # "request k: what went wrong"

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    def summary(self) -> str:
        lines = [f"{self.requests} requests, concurrency {self.concurrency}: {self.ok} ok, {len(self.errors)} "
                 f"errors in {self.wall_s:.2f} s"]
        if self.wall_s > 0:
            lines.append(f"throughput: {self.ok / self.wall_s:.1f} requests/s, "
                         f"{self.completion_tokens / self.wall_s:.1f} output tokens/s")
        if self.latencies_s:
            ms = [s * 1e3 for s in self.latencies_s]
            lines.append(f"latency: p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
                         f"max {max(ms):.0f} ms")
        if self.errors:
            kinds = Counter(e.split(": ", 2)[1] for e in self.errors)
            lines.append("errors: " + ", ".join(f"{k} x{v}" for k, v in kinds.most_common()))
            lines.append(f"first error: {self.errors[0]}")
        return "\n".join(lines)


def run(url: str, bodies: Sequence[dict], concurrency: int, *, api_key: str | None = None,
        timeout_s: float = 120.0) -> Report:
    """Send every body once from `concurrency` threads against `url` (the server's base, without /v1)."""
    import httpx  # here, not at the top: `percentile` is shared with scripts/serve_bench.py, which has no httpx

    report = Report(requests=len(bodies), concurrency=concurrency)
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, limits=limits) as client:
        def one(k: int) -> None:
            request = bodies[k]
            t0 = time.perf_counter()
            try:
                r = client.post("/v1/chat/completions", json=request)
                try:
                    body: object = r.json()
                except ValueError:
                    body = r.text
                problem = check_response(r.status_code, body, request)
            except httpx.HTTPError as exc:
                problem, body = f"{type(exc).__name__}: {exc}", None
            seconds = time.perf_counter() - t0
            with lock:
                if problem is None:
                    report.latencies_s.append(seconds)
                    report.completion_tokens += body["usage"]["completion_tokens"]  # type: ignore[index]
                else:
                    report.errors.append(f"request {k}: {problem}")

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency, thread_name_prefix="loadgen") as pool:
            list(pool.map(one, range(len(bodies))))
        report.wall_s = time.perf_counter() - start
    return report


def served_model(url: str, api_key: str | None = None) -> str:
    """The first model `GET /v1/models` lists."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.serve.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000 (no /v1)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16, help="client threads")
    p.add_argument("--model", help="the `model` to send (default: the first one /v1/models lists)")
    p.add_argument("--max-tokens", type=int, default=8, help="requests cycle max_tokens over 1..this")
    p.add_argument("--image-every", type=int, default=2, help="every k-th request has an image (0: none)")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        p.error("--requests, --concurrency and --max-tokens must be >= 1")
    model = args.model or served_model(args.url, args.api_key)
    bodies = default_bodies(model, args.requests, max_tokens=args.max_tokens, image_every=args.image_every)
    report = run(args.url, bodies, args.concurrency, api_key=args.api_key, timeout_s=args.timeout)
    print(report.summary())
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
