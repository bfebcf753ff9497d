"""Remote media fetching (pipeline/fetch.py): off by default, SSRF-checked, bounded, retried, typed errors.

A local HTTP server plays the remote host. Loopback is exactly what the SSRF check refuses, so the tests
that need a successful fetch swap in a checker that admits this one server (and nothing else): the
redirect handler goes through the same checker, so a redirect off the server is refused."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.parse

import pytest

import pipeline.fetch as fetch
from models.errors import InputError
from pipeline.fetch import media_bytes

BODY = bytes(range(256)) * 40


class Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/img.jpg":
            self._send(200, BODY)
        elif self.path == "/slow.jpg":
            time.sleep(1.5)
            self._send(200, BODY)
        elif self.path == "/flaky.jpg":  # a 503 first, then the body
            self._send(503, b"busy") if Handler.hits[self.path] == 1 else self._send(200, BODY)
        elif self.path == "/away":
            self.send_response(302)
            self.send_header("Location", "http://10.1.2.3/internal.jpg")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def admit_server(server, monkeypatch):
    real = fetch._check_public

    def check(url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != server:
            real(url)

    monkeypatch.setattr(fetch, "_check_public", check)
    return server


def kind(exc: pytest.ExceptionInfo) -> str:
    return exc.value.kind


def test_http_is_off_unless_allowed(server):
    with pytest.raises(InputError, match="--allow-http") as exc:
        media_bytes(server + "/img.jpg")
    assert kind(exc) == "fetch_error"


def test_loopback_and_private_addresses_are_refused(server):
    for url in (server + "/img.jpg", "http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(InputError, match="non-public") as exc:
            media_bytes(url, allow_http=True, timeout=1)
        assert kind(exc) == "fetch_error"


def test_fetch_ok_and_bounded(admit_server):
    assert media_bytes(admit_server + "/img.jpg", allow_http=True) == BODY
    with pytest.raises(InputError) as exc:
        media_bytes(admit_server + "/img.jpg", allow_http=True, max_bytes=len(BODY) - 1)
    assert kind(exc) == "too_large"


def test_retries_5xx_but_not_4xx(admit_server):
    assert media_bytes(admit_server + "/flaky.jpg", allow_http=True) == BODY
    assert Handler.hits["/flaky.jpg"] == 2
    with pytest.raises(InputError, match="HTTP 404") as exc:
        media_bytes(admit_server + "/missing.jpg", allow_http=True)
    assert kind(exc) == "fetch_error" and Handler.hits["/missing.jpg"] == 1


def test_timeout_after_bounded_tries(admit_server):
    with pytest.raises(InputError, match="failed") as exc:
        media_bytes(admit_server + "/slow.jpg", allow_http=True, timeout=0.3)
    assert kind(exc) == "fetch_error" and Handler.hits["/slow.jpg"] == 3


def test_redirect_to_a_private_address_is_refused(admit_server):
    with pytest.raises(InputError, match="non-public") as exc:
        media_bytes(admit_server + "/away", allow_http=True)
    assert kind(exc) == "fetch_error"
