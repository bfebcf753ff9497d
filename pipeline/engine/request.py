"""What goes into the engine and what comes out.

A `Request` carries already tokenized prompt ids, its preprocessed media (model specific: see each
runner), sampling params and a caller-chosen id. A `Completion` always comes back for every request,
successful or not: per-request failures (oversize, bad media, a crash while admitting it) become
`finish_reason="error"` with a typed `error` string, never an exception that takes the batch down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ops.sampling import SamplingParams


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    media: Any = None
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Completion:
    request_id: str
    token_ids: list[int]
    text: str | None
    finish_reason: str  # "stop" | "length" | "error"
    num_prompt_tokens: int
    num_generated_tokens: int
    error: str | None = None

    @classmethod
    def failed(cls, request: Request, error: str) -> Completion:
        return cls(request.request_id, [], None, "error", len(request.prompt_ids), 0, error)


@dataclass
class Sequence:
    """A request while it runs: its slot, generated tokens and sampling state."""

    request: Request
    slot: int
    stop_ids: frozenset[int]
    generator: torch.Generator | None
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def length(self) -> int:
        return len(self.request.prompt_ids) + len(self.output)

    def append(self, token: int, stop_hit: bool) -> None:
        self.output.append(token)
        params = self.request.sampling
        if stop_hit:
            self.finish_reason = "stop"
        elif len(self.output) >= params.max_new_tokens:
            self.finish_reason = "length"
