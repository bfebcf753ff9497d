"""Bad requests get their 4xx in OpenAI's error shape with a clear message, and the server keeps answering;
admission control answers 429 with Retry-After; a client that drops its stream frees its engine slot; the
bearer token is enforced on /v1/* when configured (tiny LLaVA-OneVision, real uvicorn in this process)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from fastapi.testclient import TestClient

from pipeline.serve.app import build_app


def png_declaring(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header declares width x height pixels (a decompression bomb)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * 64) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def url_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


CASES = {  # name: (request fields or raw body, status, error code)
    "bad json": (b'{"model": ', 400, "invalid_json"),
    "bad base64": ({"content": [url_part("data:image/png;base64,***")]}, 400, "invalid_base64"),
    "not an image": ({"content": [url_part(b64(b"<html>hello</html>"))]}, 400, "decode_error"),
    "bomb": ({"content": [url_part(b64(png_declaring(100_000, 100_000)))]}, 400, "too_large"),
    "too many images": ({"images": 3}, 400, "too_many_images"),
    "over the context": ({"max_tokens": 5000}, 400, "context_length_exceeded"),
    "unknown model": ({"model": "gpt-4o"}, 404, "model_not_found"),
    "n too large": ({"n": 9}, 400, "invalid_value"),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400,
              "unsupported_parameter"),
    "video url": ({"content": [{"type": "video_url", "video_url": {"url": b64(b"not a video")}}]}, 400,
                  "decode_error"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_requests_get_their_4xx_and_the_server_goes_on(http, ov_service, kit, name):
    spec, status, code = CASES[name]
    if isinstance(spec, bytes):
        r = http.post("/v1/chat/completions", content=spec, headers={"content-type": "application/json"})
    else:
        spec = dict(spec)
        content = spec.pop("content", None) or [url_part(kit.data_url(kit.png(seed=k)))
                                                for k in range(spec.pop("images", 1))]
        body = {"model": ov_service.model_name, "max_tokens": 4,
                "messages": [{"role": "user", "content": [*content, {"type": "text", "text": "?"}]}], **spec}
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    ok = http.post("/v1/chat/completions", json={"model": ov_service.model_name, "max_tokens": 2,
                                                 "messages": kit.image_message("?", kit.png())})
    assert ok.status_code == 200 and http.get("/health").status_code == 200


def test_admission_429_and_a_dropped_stream_frees_its_slot(http, ov_service, kit, monkeypatch):
    monkeypatch.setattr(ov_service, "max_pending", 1)
    messages = kit.image_message("Tell me everything.", kit.png(seed=9))
    body = {"model": ov_service.model_name, "messages": messages, "stream": True, "max_tokens": 800}
    stats = ov_service.engine.stats
    before = stats["generated_tokens"]
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        assert '"role": "assistant"' in next(line for line in lines if line.startswith("data: "))
        assert ov_service.engine.running_count() == 1  # still generating its 800 tokens
        busy = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded"
    # The client closed the connection mid-stream: its request leaves the engine and admission.
    kit.wait_until(lambda: ov_service.engine.running_count() == 0 and ov_service.pending == 0, "the slot to free")
    assert stats["generated_tokens"] - before < 800  # cancelled, not run to its end
    again = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
    assert again.status_code == 200, again.text


def test_bearer_token(ov_service):
    client = TestClient(build_app(ov_service, api_key="s3cret"))
    assert client.get("/health").status_code == 200  # probes need no token
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = client.post("/v1/chat/completions", headers=headers, json={})
        assert r.status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_unknown_routes_and_models_answer_in_the_error_shape(http, ov_service):
    assert http.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"
    assert http.get(f"/v1/models/{ov_service.model_name}").json()["id"] == ov_service.model_name
    r = http.get("/v1/completions")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_dropped_non_streaming_request_is_cancelled(ov_server, ov_service, kit):
    import json
    import socket
    from urllib.parse import urlsplit

    stats = ov_service.engine.stats
    before = stats["generated_tokens"]
    body = json.dumps({"model": ov_service.model_name, "max_tokens": 800,
                       "messages": kit.image_message("Tell me everything.", kit.png(seed=9))}).encode()
    where = urlsplit(ov_server.url)
    with socket.create_connection((where.hostname, where.port)) as sock:  # raw, to drop it mid-request
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        kit.wait_until(lambda: ov_service.engine.running_count() == 1, "the request to run")
    kit.wait_until(lambda: ov_service.engine.running_count() == 0 and ov_service.pending == 0, "the slot to free")
    assert stats["generated_tokens"] - before < 800
