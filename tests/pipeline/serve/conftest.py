"""Fixtures of the online-endpoint tests: one `ChatService` over the tiny OneVision checkpoint (CPU, float32)
shared by the session, the app served by a real uvicorn on a port the OS picks, and request helpers (the
`kit` fixture: test modules are imported by path, so they cannot import this file by name)."""

from __future__ import annotations

import base64
import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from pipeline.serve.app import build_app
from pipeline.serve.messages import MediaLimits
from pipeline.serve.service import ChatService, ServeConfig

MAX_LEN = 1024


def png(width: int = 60, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(text: str, *images: bytes) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(b)}} for b in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def serve_config(model_dir, **overrides) -> ServeConfig:
    kw = dict(model=str(model_dir), max_model_len=MAX_LEN, max_num_seqs=4, dtype="float32", cuda_graphs=False,
              media=MediaLimits(max_images=2, max_image_bytes=2**20), max_n=4)
    kw.update(overrides)
    return ServeConfig(**kw)


@pytest.fixture(scope="session")
def ov_service(tiny_ov_dir):
    service = ChatService(serve_config(tiny_ov_dir))
    yield service
    service.shutdown()


class LocalServer:
    """A uvicorn server on a free port (port 0) in a daemon thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def ov_server(ov_service):
    server = LocalServer(build_app(ov_service))
    yield server
    server.stop()


@pytest.fixture
def http(ov_server):
    import httpx

    with httpx.Client(base_url=ov_server.url, timeout=60) as client:
        yield client


def wait_until(predicate, what: str, limit_s: float = 30.0) -> None:
    """Poll `predicate` (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sse_events(lines) -> list:
    """`data: ...` lines of an SSE body -> the parsed chunks, with the final "[DONE]" kept as a string."""
    import json

    out = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    return SimpleNamespace(png=png, data_url=data_url, image_message=image_message, serve_config=serve_config,
                           wait_until=wait_until, sse_events=sse_events, LocalServer=LocalServer, MAX_LEN=MAX_LEN)
