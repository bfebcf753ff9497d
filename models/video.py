"""Video decoding with PyAV: N uniformly sampled RGB frames of one video, by seeking when it pays.

Contract of `decode_video(data, num_frames)`:
- `data` is the encoded file (bytes) or a local path. Returns `VideoFrames`: `frames` uint8 [F, H, W, 3] RGB
  with the display-matrix rotation applied (multiples of 90 degrees, as ffmpeg's autorotate), `indices` (the
  presentation-order frame numbers taken), `total_frames`, `fps`.
- Sampling equals transformers' `default_sample_indices_fn(num_frames=N)`: `arange(N) * total // N`.
  A video with fewer than N frames gives all of its frames (the reference raises there; with N = total its
  rule takes every frame, which is what we return).
- Frame i is the i-th frame in presentation order, i.e. the i-th frame a plain sequential decode yields.
  The frame list comes from one demux pass (packets only, no decoding), which also gives exact counts for
  variable-frame-rate streams and for containers without a frame count (Matroska/WebM). Frames are then
  decoded forward, seeking to a keyframe only when one lies between the current position and the next
  wanted frame (so seeking never costs more than the sequential pass). Streams whose packets lack
  timestamps, or where a seek does not land on the expected frames, are decoded sequentially instead.
- Errors (all `InputError`s): unreadable/random bytes -> `MediaDecodeError`; larger than `max_bytes`, frames
  above `max_pixels`, or decoding past `timeout_s` -> `MediaTooLargeError`/`MediaDecodeError`; no video
  stream (audio-only), zero frames, a partial file (fewer frames present or decodable than the container
  declares: PyAV truncates silently, so this is checked, not caught), or a frame size change -> `VideoError`.
  A partial video is an error rather than "use what decoded": its sampling would silently differ.
"""

from __future__ import annotations

import bisect
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from models.errors import InputError, MediaDecodeError, MediaTooLargeError, VideoError

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_PIXELS = 7680 * 4320  # 8K UHD
DEFAULT_TIMEOUT_S = 120.0

# PyAV raises FFmpegError subclasses (themselves OSError/ValueError/EOFError...), and, on damaged metadata or
# streams, plain ValueError/UnicodeError/IndexError/OverflowError/RuntimeError: all mean "bad input" here.
_AV_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError, OverflowError, RuntimeError)


@dataclass(frozen=True)
class VideoFrames:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    indices: np.ndarray  # int64 [F]
    total_frames: int
    fps: float
    decoded_frames: int = 0  # frames the decoder produced, sampled or not (the cost of this call)
    seeks: int = 0


def sample_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Uniform sampling as transformers' default sampler, clamped to the frames the video has."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if total_frames < 1:
        raise VideoError("the video has no frames")
    n = min(num_frames, total_frames)
    return np.arange(n, dtype=np.int64) * total_frames // n


class _Deadline:
    def __init__(self, timeout_s: float | None):
        self.end = None if timeout_s is None else time.monotonic() + timeout_s
        self.timeout_s = timeout_s

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise MediaDecodeError(f"video decoding exceeded {self.timeout_s:g} s", kind="decode_timeout")


def _rotate(rgb: np.ndarray, rotation: float) -> np.ndarray:
    # `rotation` is the display matrix angle, counterclockwise; np.rot90 with k > 0 turns counterclockwise.
    k = round(rotation / 90.0)
    if abs(rotation - 90.0 * k) >= 1.0 or k % 4 == 0:
        return rgb
    return np.rot90(rgb, k=k % 4)


def _to_rgb(frame: av.VideoFrame, max_pixels: int) -> np.ndarray:
    if frame.width * frame.height > max_pixels:
        raise MediaTooLargeError(f"video frame {frame.width}x{frame.height} exceeds {max_pixels} pixels")
    return _rotate(frame.to_ndarray(format="rgb24"), float(frame.rotation or 0))


class _Video:
    """One open container plus its packet index (presentation timestamps and keyframes)."""

    def __init__(self, source: bytes | str, deadline: _Deadline, max_pixels: int):
        self.source, self.deadline, self.max_pixels = source, deadline, max_pixels
        self.decoded = self.seeks = 0
        self.container = self._open()
        try:
            self._index(deadline, max_pixels)
        except BaseException:
            self.container.close()
            raise

    def _index(self, deadline: _Deadline, max_pixels: int) -> None:
        if not self.container.streams.video:
            raise VideoError("the file has no video stream")
        stream = self.container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > max_pixels:
            raise MediaTooLargeError(f"video {w}x{h} exceeds {max_pixels} pixels")
        self.declared = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        pts, keys = [], []
        for packet in self.container.demux(stream):
            deadline.check()
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        self.timed = all(p is not None for p in pts) and len(set(pts)) == len(pts)
        self.pts = sorted(pts) if self.timed else []
        self.keys = sorted(keys) if self.timed else []
        self.num_packets = len(pts)

    def _open(self) -> av.container.InputContainer:
        src = io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source
        return av.open(src, mode="r", metadata_errors="ignore")

    def reopen(self) -> None:
        self.container.close()
        self.container = self._open()

    def frames(self) -> Iterator[av.VideoFrame]:
        stream = self.container.streams.video[0]
        for packet in self.container.demux(stream):
            self.deadline.check()
            for frame in packet.decode():
                self.decoded += 1
                yield frame

    def decode_seeking(self, wanted: np.ndarray) -> list[np.ndarray] | None:
        """Frames at presentation positions `wanted` (ascending), or None if the stream misbehaves."""
        stream = self.container.streams.video[0]
        out: list[np.ndarray] = []
        it: Iterator[av.VideoFrame] | None = None
        last = None  # pts of the last frame decoded on the current run
        for i in wanted:
            target = self.pts[int(i)]
            k = bisect.bisect_right(self.keys, target)
            key = self.keys[k - 1] if k else None
            if it is None or (key is not None and last is not None and key > last):
                self.container.seek(key if key is not None else self.pts[0], stream=stream, backward=True)
                self.seeks += 1
                it, last = self.frames(), None
            for frame in it:
                last = frame.pts
                if frame.pts is None or frame.pts > target:
                    return None
                if frame.pts == target:
                    out.append(_to_rgb(frame, self.max_pixels))
                    break
            else:
                return None
        return out

    def decode_sequential(self, wanted: np.ndarray) -> tuple[list[np.ndarray], int]:
        """Decode every frame in order; keep those at `wanted`. Returns (kept frames, frames decoded)."""
        want = set(int(i) for i in wanted)
        out: list[np.ndarray] = []
        n = 0
        for frame in self.frames():
            if n in want:
                out.append(_to_rgb(frame, self.max_pixels))
            n += 1
        return out, n


def _check_size(data: bytes | str | Path, max_bytes: int) -> bytes | str:
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data)
        size = len(data)
    elif isinstance(data, str | Path):
        data = str(data)
        try:
            size = os.path.getsize(data)
        except OSError as e:
            raise MediaDecodeError(f"cannot read video file: {e}") from e
    else:
        raise TypeError(f"video must be bytes or a path, got {type(data).__name__}")
    if size == 0:
        raise MediaDecodeError("empty video file")
    if size > max_bytes:
        raise MediaTooLargeError(f"video is {size} bytes, limit {max_bytes}")
    return data


def decode_video(data: bytes | str | Path, num_frames: int, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> VideoFrames:
    """Decode `num_frames` uniformly sampled frames of a video (see the module docstring)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    source = _check_size(data, max_bytes)
    deadline = _Deadline(timeout_s)
    video = None
    try:
        video = _Video(source, deadline, max_pixels)
        total = video.num_packets
        if video.declared > total:
            raise VideoError(f"partial video: the container declares {video.declared} frames, "
                             f"only {total} are present")
        indices = sample_indices(total, num_frames)
        frames = video.decode_seeking(indices) if video.timed else None
        if frames is None:
            video.reopen()
            frames, decoded = video.decode_sequential(indices)
            if decoded == 0:
                raise VideoError("no frame of the video could be decoded")
            if decoded < total:
                raise VideoError(f"partial video: {total} frames present, only {decoded} decodable")
            if decoded > total:  # more frames than packets (rare codecs): sample again over what decodes
                total, indices = decoded, sample_indices(decoded, num_frames)
                video.reopen()
                frames, _ = video.decode_sequential(indices)
        if len(frames) != len(indices):
            raise VideoError(f"partial video: got {len(frames)} of {len(indices)} sampled frames")
        if len({f.shape for f in frames}) != 1:
            raise VideoError("the frame size changes within the video")
        return VideoFrames(np.stack(frames), indices, total, video.fps, video.decoded, video.seeks)
    except InputError:
        raise
    except (*_AV_ERRORS, UnicodeError) as e:
        raise MediaDecodeError(f"cannot decode video: {type(e).__name__}: {e}") from e
    finally:
        if video is not None:
            video.container.close()
