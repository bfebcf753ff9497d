"""Media cell -> bytes. A cell holds bytes, a local path, an fsspec URI (`s3://...`) or, only when the job
allows it, an http(s) URL.

Remote fetches are bounded: `max_bytes` (default 256 MiB) and a timeout. http(s) is off by default; when
on, every hop of a redirect chain must resolve to a public address (no loopback, private, link-local or
reserved ranges: SSRF), and at most 3 tries are made on connection errors, timeouts and 5xx. Failures are typed
`InputError`s (`missing_media`, `fetch_error`, `too_large`).
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
import urllib.request

import fsspec

from models.errors import InputError, MediaTooLargeError

MAX_BYTES = 256 * 2**20


def _check_public(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise InputError(f"bad URL {url!r}", kind="fetch_error")
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve {host}: {exc}", kind="fetch_error") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global or addr.is_multicast:
            raise InputError(f"refusing to fetch {url}: {host} resolves to non-public address {addr}",
                             kind="fetch_error")


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_public(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_http(url: str, timeout: float, max_bytes: int, tries: int = 3) -> bytes:
    _check_public(url)
    opener = urllib.request.build_opener(_CheckedRedirect)
    for attempt in range(tries):
        try:
            with opener.open(url, timeout=timeout) as resp:
                data = resp.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise MediaTooLargeError(f"{url} is larger than {max_bytes} bytes")
            return data
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == tries - 1:  # 4xx will not change on a retry
                raise InputError(f"fetching {url} failed: HTTP {exc.code} {exc.reason}", kind="fetch_error") from None
            time.sleep(0.5 * 2**attempt)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == tries - 1:
                raise InputError(f"fetching {url} failed: {exc}", kind="fetch_error") from None
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def media_bytes(cell, *, allow_http: bool = False, timeout: float = 30.0, max_bytes: int = MAX_BYTES) -> bytes:
    if isinstance(cell, bytes | bytearray | memoryview):
        return bytes(cell)
    if not isinstance(cell, str):
        raise InputError(f"media cell of type {type(cell).__name__} is neither bytes nor a path", kind="bad_input")
    scheme = urllib.parse.urlsplit(cell).scheme.lower()
    if scheme in ("http", "https"):
        if not allow_http:
            raise InputError(f"http(s) media URLs are off; pass --allow-http to fetch {cell}", kind="fetch_error")
        return _fetch_http(cell, timeout, max_bytes)
    try:
        fs, path = fsspec.core.url_to_fs(cell)
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise MediaTooLargeError(f"{cell} is {size} bytes (limit {max_bytes})")
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"no such file: {cell}", kind="missing_media") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {cell}: {exc}", kind="fetch_error") from None
