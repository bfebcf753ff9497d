"""The client side of scripts/serve_bench.py: request bodies (one smooth random JPEG each, as a data: URL) and
concurrency levels of streamed `/v1/chat/completions` from client threads, timed per request.

Only the standard library talks HTTP (the GPU machine has no httpx). Per request: TTFT = arrival of the first
delta chunk, TPOT = (arrival of the finish chunk - TTFT) / (completion tokens - 1), latency, tokens from the usage
chunk. Per level: requests/s and output tokens/s over the level's wall time, p50/p99 (nearest rank).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time

from pipeline.serve.loadgen import percentile  # nearest rank; loadgen imports httpx only to send

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
