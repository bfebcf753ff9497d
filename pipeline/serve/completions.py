"""One chat-completions request through the shared engine: the whole answer, or its SSE chunks.

Contract:
- `complete(service, req)` returns the `chat.completion` body; `n` choices run as `n` engine requests in the
  same continuous batch (seeded choices use `seed + index`, so each is reproducible).
- `stream_chunks(service, req)` yields `chat.completion.chunk` bodies: per choice a first chunk with
  `{"role": "assistant", "content": ""}`, content deltas as tokens arrive, a last chunk with `finish_reason`;
  then, with `stream_options.include_usage`, one chunk with no choices and the usage. The concatenated
  deltas equal the non-streamed text: with stop strings, the tail that could still become a stop string is
  held back until the engine has decided, and the final delta comes from the engine's (cut) text.
- A request the engine refuses before producing a token becomes an `APIError` (before any chunk is sent);
  the admission slot is held from preprocessing until the last chunk, and given back however it ends.
Closing the chunk iterator early (client gone) cancels the choices in the engine (stream_engine.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from pipeline.engine.request import Completion
from pipeline.serve.schemas import APIError, ChatRequest, chunk_body, completion_body, now, usage_body

log = logging.getLogger("vlmcap.serve")


def engine_error(c: Completion) -> APIError:
    """An engine error completion -> the HTTP error it stands for."""
    kind, _, message = (c.error or "engine_error: unknown").partition(": ")
    if kind == "too_long":
        return APIError(400, message, param="messages", code="context_length_exceeded")
    if kind in ("prompt_error", "unsupported_media"):
        return APIError(400, message, param="messages", code=kind)
    return APIError(500, f"{kind}: {message}", type="server_error", code=kind)


def _new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


async def complete(service, req: ChatRequest) -> dict:
    t0 = time.perf_counter()
    with service.admission(req.n):
        prepared = await service.prepare(req)
        requests = service.engine_requests(prepared, req)
        try:
            done: list[Completion] = list(await asyncio.gather(*(service.engine.submit(r) for r in requests)))
        except asyncio.CancelledError:  # the HTTP handler was cancelled (client gone under Serve)
            for r in requests:
                service.engine.cancel(r)
            raise
    failed = next((c for c in done if c.error is not None), None)
    if failed is not None:
        raise engine_error(failed)
    generated = sum(c.num_generated_tokens for c in done)
    service.record(200, len(prepared.prompt_ids), generated, time.perf_counter() - t0, None)
    return completion_body(_new_id(), service.model_name, now(), [(c.text or "", c.finish_reason) for c in done],
                           len(prepared.prompt_ids), generated)


class _ChoiceText:
    """Text deltas of one streamed choice, never ahead of what the engine's final (stop-cut) text keeps."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.detok = tokenizer.detokenizer()
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.sent = ""

    def push(self, ids: list[int]) -> str:
        self.detok.push(ids)
        safe = self.detok.text[: len(self.detok.text) - self.holdback]
        if len(safe) <= len(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta

    def finish(self, final: str) -> str:
        if not final.startswith(self.sent):  # not expected: the engine and the detokenizer decode the same ids
            log.warning("streamed text diverged from the final text; sending the final tail only")
            return final[len(self.sent):] if len(final) > len(self.sent) else ""
        delta, self.sent = final[len(self.sent):], final
        return delta


async def stream_chunks(service, req: ChatRequest) -> AsyncIterator[dict]:
    t0 = time.perf_counter()
    rid, created, model = _new_id(), now(), service.model_name
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(index, delta=None, finish=None, usage=None):
        return chunk_body(rid, model, created, index, delta, finish, usage, with_usage_key=include_usage)

    with service.admission(req.n):
        prepared = await service.prepare(req)
        requests = service.engine_requests(prepared, req)
        texts = [_ChoiceText(service.engine.tokenizer, req.stop_strings) for _ in requests]
        events = service.engine.stream(requests)
        generated, first_token_s, status = 0, None, 499  # 499: the client went away before the end
        started = False  # errors before the first chunk are the app's to answer and record
        try:
            i, kind, value = await events.__anext__()
            if kind == "done" and value.error is not None:
                raise engine_error(value)  # nothing sent yet: an ordinary HTTP error
            started, first_token_s = True, time.perf_counter() - t0
            for k in range(len(requests)):
                yield chunk(k, {"role": "assistant", "content": ""})
            while True:
                if kind == "tokens":
                    delta = texts[i].push(value)
                    if delta:
                        yield chunk(i, {"content": delta})
                else:
                    if value.error is not None:  # after the stream began: an error event, then [DONE]
                        status = engine_error(value).status
                        yield engine_error(value).body()
                        return
                    delta = texts[i].finish(value.text or "")
                    if delta:
                        yield chunk(i, {"content": delta})
                    yield chunk(i, {}, value.finish_reason)
                    generated += value.num_generated_tokens
                try:
                    i, kind, value = await events.__anext__()
                except StopAsyncIteration:
                    break
            if include_usage:
                yield chunk(None, usage=usage_body(len(prepared.prompt_ids), generated))
            status = 200
        finally:
            await events.aclose()  # cancels the choices still running
            if started:
                service.record(status, len(prepared.prompt_ids), generated, time.perf_counter() - t0,
                               first_token_s)
