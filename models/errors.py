"""Typed errors for everything that can go wrong with one request's inputs.

Contract: every per-row failure raised below `pipeline/` is an `InputError` (or subclass) whose
`kind` is a short snake_case tag. The pipeline turns it into an error row whose `error` column reads
``f"{kind}: {message}"``; anything that is not an `InputError` is a bug and is reported as such.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with one request's inputs; the job goes on and the row gets this error."""

    kind = "input_error"

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    def row_error(self) -> str:
        return f"{self.kind}: {self}"


class MediaDecodeError(InputError):
    """Bytes that are not a decodable image or video (truncated, random, HTML, empty...)."""

    kind = "decode_error"


class MediaTooLargeError(InputError):
    """Declared size beyond the configured limits (decompression bombs, absurd dimensions)."""

    kind = "too_large"


class VideoError(InputError):
    """A container that decodes but cannot be sampled (no video stream, zero frames, partial decode)."""

    kind = "video_error"


class PromptError(InputError):
    """Prompt/messages that cannot be rendered or tokenized, or do not match the media given."""

    kind = "prompt_error"


class CheckpointError(Exception):
    """A checkpoint directory that cannot be loaded: missing, unexpected or mis-shaped tensors, pickle files."""
