"""The FastAPI app of the online endpoint (plain ASGI: runs under uvicorn, in tests, or as Serve's ingress).

Routes: `POST /v1/chat/completions` (JSON, or SSE with `stream: true`: `data: {chunk}` events, then
`data: [DONE]`), `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` (200 once the model is loaded
and the engine thread runs, else 503). Every error, including unknown routes, is answered in OpenAI's
shape `{"error": {"message", "type", "param", "code"}}`: 400 invalid request, 401 missing or wrong bearer
token (only when built with an `api_key`; /health stays open), 404 unknown model or route, 413 body
over `max_body_bytes`, 429 admission refused (with `Retry-After`), 500 engine failure.
A streamed response whose client disconnects is closed at once, which cancels its engine requests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.serve.completions import complete, stream_chunks
from pipeline.serve.schemas import APIError, parse_request


class _SSEResponse(StreamingResponse):
    """Streams while watching for the client's disconnect (whatever the server's ASGI version: with 2.4,
    Starlette would notice only at the next send, and a request still waiting for a slot sends nothing),
    and always closes the chunk iterators, so their `finally` blocks cancel the engine requests now."""

    def __init__(self, content: AsyncIterator[str], inner: AsyncIterator[dict]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    await self.stream_response(send)
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch)
        except OSError:  # the client went away while we were sending
            pass
        finally:
            await self.body_iterator.aclose()
            await self.inner.aclose()


async def _unless_disconnected(request: Request, work):
    """Await `work`, cancelling it (and so its engine requests) when the client disconnects first: a server
    does not cancel a plain handler by itself, and an abandoned request would hold its slot to the end."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":  # the body is read: only this remains
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # its `except CancelledError` cancels the engine requests
            await asyncio.wait({task})
    if task.cancelled():
        return None  # the client went away; nobody reads the answer
    return task.result()


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def build_app(service, api_key: str | None = None) -> FastAPI:
    """The app over `service` (a `ChatService`); with `api_key`, /v1/* wants `Authorization: Bearer <key>`."""
    app = FastAPI(title="vlmcap", docs_url=None, redoc_url=None, openapi_url=None)
    cfg = service.config

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type=kind, code=kind))

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           type="authentication_error", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != service.model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{service.model_name}'",
                           param="model", code="model_not_found")

    async def read_body(request: Request) -> bytes:
        limit = cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body over {limit} bytes", code="request_too_large")
        chunks, size = [], 0
        async for part in request.stream():  # a missing or lying Content-Length is bounded here
            size += len(part)
            if size > limit:
                raise APIError(413, f"request body over {limit} bytes", code="request_too_large")
            chunks.append(part)
        return b"".join(chunks)

    def model_card() -> dict:
        return {"id": service.model_name, "object": "model", "created": 0, "owned_by": "vlmcap",
                "max_model_len": service.max_len}

    @app.get("/health")
    async def health() -> Response:
        ok = service.healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_auth(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        check_auth(request)
        check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            check_auth(request)
            req = parse_request(await read_body(request), cfg.max_n)
            check_model(req.model)
            if not req.stream:
                body = await _unless_disconnected(request, complete(service, req))
                if body is None:
                    service.record(499, 0, 0, time.perf_counter() - t0, None)
                    return Response(status_code=499)
                return JSONResponse(body)
            chunks = stream_chunks(service, req)
            try:
                first = await chunks.__anext__()  # engine refusals become plain HTTP errors
            except BaseException:
                await chunks.aclose()
                raise
        except APIError as e:
            service.record(e.status, 0, 0, time.perf_counter() - t0, None)
            raise

        async def events() -> AsyncIterator[str]:
            yield _sse(first)
            async for c in chunks:
                yield _sse(c)
            yield _sse("[DONE]")

        return _SSEResponse(events(), chunks)

    return app
