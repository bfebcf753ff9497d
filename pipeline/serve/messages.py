"""OpenAI chat messages -> the messages the checkpoint's chat template renders, plus the media bytes.

Contract: `split_media(messages, limits)` returns `(template_messages, images, videos)`:
- text parts stay text parts, each `image_url` part becomes `{"type": "image"}` and each `video_url` part
  `{"type": "video"}` (the template only ever sees placeholders, never a multi-megabyte URL), in order;
  the `developer` role is rendered as `system` (OpenAI's newer name for it);
- `images` / `videos` are the raw bytes in the order of their placeholders. Nothing is decoded here: the
  model's codec decodes them (pipeline/media_codec.py), so an undecodable image or a decompression bomb is
  refused there with the same typed errors as in a batch job.
Where media may come from: `data:` URLs (base64, size-bounded before decoding); http(s) only with
`allow_http` (pipeline/fetch.py: public addresses only, bounded, retried); `file://` URLs and paths only
inside `local_media_dir` when one is configured. Every refusal is an `APIError` 400 with a `code`.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from models.errors import InputError
from pipeline.fetch import media_bytes
from pipeline.serve.schemas import APIError, ImagePart, Message, TextPart, VideoPart


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 20 * 2**20
    max_video_bytes: int = 200 * 2**20
    max_images: int = 8  # per request; the model may allow fewer (Llama-3.2-Vision: 1)
    max_videos: int = 1  # the codec samples one video per request
    allow_http: bool = False
    local_media_dir: str | None = None  # file:// URLs and paths are refused unless inside this directory


def _bad(message: str, code: str, param: str | None = "messages") -> APIError:
    return APIError(400, message, param=param, code=code)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise _bad("a data: URL needs the form data:<type>;base64,<data>", "invalid_data_url")
    if not head.endswith(";base64"):
        raise _bad("only base64 data: URLs are supported", "invalid_data_url")
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise _bad(f"media in a data: URL is larger than {max_bytes} bytes", "media_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"the data: URL is not valid base64 ({exc})", "invalid_base64") from None
    if not data:
        raise _bad("the data: URL holds no bytes", "invalid_data_url")
    return data


def _local_file(url: str, limits: MediaLimits, max_bytes: int) -> bytes:
    if limits.local_media_dir is None:
        raise _bad("file URLs and paths are not allowed on this server", "unsupported_url")
    raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file:") else url
    root = Path(limits.local_media_dir).resolve()
    path = (root / raw).resolve()  # an absolute `raw` replaces root; the check below then decides
    if not path.is_relative_to(root):
        raise _bad(f"{url} is outside the allowed media directory", "unsupported_url")
    if not path.is_file():
        raise _bad(f"no such file: {url}", "missing_media")
    if path.stat().st_size > max_bytes:
        raise _bad(f"{url} is larger than {max_bytes} bytes", "media_too_large")
    return path.read_bytes()


def fetch(url: str, limits: MediaLimits, max_bytes: int) -> bytes:
    """The bytes behind one media URL (see the module docstring for what is allowed)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "data":
        return decode_data_url(url, max_bytes)
    if scheme in ("http", "https"):
        if not limits.allow_http:
            raise _bad("http(s) media URLs are off on this server; send the image as a data: URL", "unsupported_url")
        try:
            return media_bytes(url, allow_http=True, max_bytes=max_bytes)
        except InputError as exc:
            raise _bad(str(exc), exc.kind) from None
    if scheme in ("", "file"):
        return _local_file(url, limits, max_bytes)
    raise _bad(f"unsupported URL scheme {scheme!r}", "unsupported_url")


def split_media(messages: list[Message], limits: MediaLimits) -> tuple[list[dict], list[bytes], list[bytes]]:
    out: list[dict] = []
    images: list[bytes] = []
    videos: list[bytes] = []
    n_images = sum(isinstance(p, ImagePart) for m in messages if isinstance(m.content, list) for p in m.content)
    n_videos = sum(isinstance(p, VideoPart) for m in messages if isinstance(m.content, list) for p in m.content)
    # Counted before any fetch or decode, so an oversized request costs nothing.
    if n_images > limits.max_images:
        raise _bad(f"{n_images} images in one request; this server takes at most {limits.max_images}",
                   "too_many_images")
    if n_videos > limits.max_videos:
        raise _bad(f"{n_videos} videos in one request; this model takes no videos" if limits.max_videos == 0 else
                   f"{n_videos} videos in one request; this server takes at most {limits.max_videos}",
                   "too_many_videos")
    for m in messages:
        msg: dict = {"role": "system" if m.role == "developer" else m.role}
        if isinstance(m.content, list):
            parts = []
            for p in m.content:
                if isinstance(p, TextPart):
                    parts.append({"type": "text", "text": p.text})
                elif isinstance(p, ImagePart):
                    images.append(fetch(p.image_url.url, limits, limits.max_image_bytes))
                    parts.append({"type": "image"})
                else:
                    videos.append(fetch(p.video_url.url, limits, limits.max_video_bytes))
                    parts.append({"type": "video"})
            msg["content"] = parts
        elif m.content is not None:
            msg["content"] = m.content
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out, images, videos
