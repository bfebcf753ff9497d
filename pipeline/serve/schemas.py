"""OpenAI chat-completions shapes: request validation, responses, stream chunks and errors.

Contract:
- `parse_request(raw_body, limits)` turns the raw HTTP body into a `ChatRequest` or raises `APIError`
  (status 400, OpenAI's `{"error": {"message", "type", "param", "code"}}`): bad JSON, a field of the wrong
  type or out of range (`param` names it), an unknown field, or a field this server does not implement
  (`tools`, `logprobs`, non-text `response_format`, penalties...). Harmless bookkeeping fields (`user`,
  `metadata`, `store`, ...) are accepted and ignored, as OpenAI-speaking harnesses send them.
- `completion_body`, `chunk_body` and `usage_body` build the response objects exactly as OpenAI's
  (`chat.completion` / `chat.completion.chunk`, `created` in seconds, usage counts).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An HTTP error answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class URLRef(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the processor decides the resolution


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: URLRef


class VideoPart(_Strict):
    """Not in OpenAI's API: the common `video_url` extension (LLaVA-OneVision only)."""

    type: Literal["video_url"]
    video_url: URLRef


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


# Sent by OpenAI clients and harnesses; nothing here changes the answer, so they are accepted and ignored.
IGNORED = ("user", "metadata", "store", "parallel_tool_calls", "service_tier")
# Features this server does not implement: present with a non-default value -> 400 naming the field.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs", "logit_bias",
               "frequency_penalty", "presence_penalty", "audio", "modalities", "prediction", "reasoning_effort",
               "web_search_options", "response_format")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown keys are sorted out by `_check_extras`

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # extension (vLLM's), 0 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def _unsupported_value(name: str, value: Any) -> bool:
    if value is None or value is False or value == [] or value == {}:
        return False
    if name in ("frequency_penalty", "presence_penalty"):
        return value != 0
    if name == "response_format":
        return not (isinstance(value, dict) and value.get("type") == "text")
    return True


def _check_extras(extra: dict[str, Any]) -> None:
    for name, value in extra.items():
        if name in IGNORED:
            continue
        if name in UNSUPPORTED:
            if _unsupported_value(name, value):
                raise APIError(400, f"'{name}' is not supported by this server", param=name,
                               code="unsupported_parameter")
            continue
        raise APIError(400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")


def parse_request(raw: bytes, max_n: int) -> ChatRequest:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(400, f"invalid '{param}': {err['msg']}", param=param, code="invalid_value") from None
    _check_extras(req.model_extra or {})
    if req.n > max_n:
        raise APIError(400, f"n = {req.n} is above this server's limit of {max_n}", param="n", code="invalid_value")
    stops = req.stop_strings
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "'stop' takes up to 4 non-empty strings", param="stop", code="invalid_value")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "'stream_options' is only allowed with stream=true", param="stream_options",
                       code="invalid_value")
    return req


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, model: str, created: int, choices: list[tuple[str, str]],
                    prompt_tokens: int, completion_tokens: int) -> dict:
    """`choices`: (text, finish_reason) per choice, in index order."""
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": reason} for i, (text, reason) in enumerate(choices)],
            "usage": usage_body(prompt_tokens, completion_tokens)}


def chunk_body(request_id: str, model: str, created: int, index: int | None, delta: dict | None = None,
               finish_reason: str | None = None, usage: dict | None = None, with_usage_key: bool = False) -> dict:
    """One SSE chunk. `index=None` is the final usage chunk (no choices). With `stream_options.include_usage`
    OpenAI sends `"usage": null` on every other chunk (`with_usage_key`)."""
    body: dict = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                  "system_fingerprint": None, "choices": []}
    if index is not None:
        body["choices"] = [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    if usage is not None or with_usage_key:
        body["usage"] = usage
    return body


def now() -> int:
    return int(time.time())
