"""models/video.py: sampled frames equal a plain sequential PyAV decode at the reference's indices.

Videos are encoded here with PyAV (several codecs/containers, short GOPs so that seeking really happens,
variable frame rate, display-matrix rotation). The oracle for "frame i" is the i-th frame of
`container.decode(video=0)`, which is how transformers' `read_video_pyav` enumerates frames; the oracle
for the indices is transformers' `default_sample_indices_fn`. Bad inputs must raise typed errors.
"""

from __future__ import annotations

import fractions
import io

import av
import numpy as np
import pytest

from models.errors import InputError, MediaDecodeError, MediaTooLargeError, VideoError
from models.video import decode_video, sample_indices

CASES = [  # (container, codec, pixel format)
    ("mp4", "mpeg4", "yuv420p"),
    ("mp4", "libx264", "yuv420p"),
    ("matroska", "libx264", "yuv420p"),
    ("avi", "mjpeg", "yuvj420p"),
    ("webm", "libvpx-vp9", "yuv420p"),
]


def frame_pattern(i: int, h: int, w: int) -> np.ndarray:
    """A frame whose content identifies its index (a decoded frame cannot pass for its neighbour)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // max(w - 1, 1) + 23 * i) % 256, (y * 255 // max(h - 1, 1)) % 256,
                  np.full((h, w), (i * 57) % 256)], axis=-1)
    a[(i % 4) * h // 4:(i % 4 + 1) * h // 4, : w // 5] = 255
    return a.astype(np.uint8)


def encode_video(fmt: str, codec: str, n: int, w: int = 64, h: int = 48, pix: str = "yuv420p",
                 gop: int | None = 6, vfr: bool = False, rotation: int | None = None) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = w, h, pix
        if gop:
            s.codec_context.gop_size = gop
        if vfr:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        t = 0
        for i in range(n):
            f = av.VideoFrame.from_ndarray(frame_pattern(i, h, w), format="rgb24")
            if vfr:
                f.pts, f.time_base = t, fractions.Fraction(1, 1000)
                t += (10, 50, 33, 120)[i % 4]
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def decode_all(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def reference_indices(total: int, n: int) -> np.ndarray:
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    return default_sample_indices_fn(VideoMetadata(total_num_frames=total, fps=24.0), num_frames=n)


@pytest.mark.parametrize("fmt,codec,pix", CASES)
@pytest.mark.parametrize("n", [1, 4, 8])
def test_sampled_frames_equal_sequential_decode(fmt, codec, pix, n):
    total = 37  # odd, not a multiple of the GOP
    data = encode_video(fmt, codec, total, pix=pix)
    everything = decode_all(data)
    assert len(everything) == total
    v = decode_video(data, n)
    assert v.total_frames == total
    np.testing.assert_array_equal(v.indices, reference_indices(total, n))
    assert v.frames.dtype == np.uint8 and v.frames.shape == (n, 48, 64, 3)
    np.testing.assert_array_equal(v.frames, everything[v.indices])


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_seeking_skips_frames_and_handles_variable_frame_rate(fmt):
    total = 121
    data = encode_video(fmt, "libx264", total, gop=10, vfr=True)
    everything = decode_all(data)
    v = decode_video(data, 6)
    np.testing.assert_array_equal(v.indices, reference_indices(total, 6))
    np.testing.assert_array_equal(v.frames, everything[v.indices])
    assert v.seeks >= 5
    assert v.decoded_frames < total // 2  # sequential decoding would have decoded all 121


def test_dense_sampling_does_not_seek_back_needlessly():
    data = encode_video("mp4", "libx264", 50, gop=25)
    v = decode_video(data, 50)
    np.testing.assert_array_equal(v.frames, decode_all(data))
    assert v.decoded_frames == 50


def test_fewer_frames_than_requested_gives_every_frame():
    data = encode_video("avi", "mjpeg", 5, pix="yuvj420p")
    v = decode_video(data, 32)
    np.testing.assert_array_equal(v.indices, np.arange(5))
    np.testing.assert_array_equal(v.frames, decode_all(data))
    np.testing.assert_array_equal(v.indices, reference_indices(5, 5))
    with pytest.raises(ValueError):  # the reference refuses; we document the clamp instead
        reference_indices(5, 32)


def test_single_frame_video_from_path(tmp_path):
    data = encode_video("mp4", "mpeg4", 1)
    path = tmp_path / "one.mp4"
    path.write_bytes(data)
    v = decode_video(str(path), 8)
    assert v.total_frames == 1 and v.indices.tolist() == [0]
    np.testing.assert_array_equal(v.frames, decode_all(data))


@pytest.mark.parametrize("rotation,k", [(90, 1), (-90, 3), (180, 2)])
def test_display_rotation_is_applied(rotation, k):
    data = encode_video("mp4", "libx264", 9, w=64, h=32, rotation=rotation)
    v = decode_video(data, 3)
    expected = np.stack([np.rot90(f, k) for f in decode_all(data)[v.indices]])
    np.testing.assert_array_equal(v.frames, expected)
    assert v.frames.shape[1:3] == ((64, 32) if k % 2 else (32, 64))


def test_sample_indices_match_reference_everywhere():
    for total in (1, 2, 7, 37, 100, 1001):
        for n in (1, 3, 8, 32):
            if n <= total:
                np.testing.assert_array_equal(sample_indices(total, n), reference_indices(total, n))


def _with_audio(fmt: str, video_track: bool) -> bytes:
    """One second of AAC audio; `video_track` adds an h264 track that never receives a frame."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        if video_track:
            v = c.add_stream("libx264", rate=24)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        s = c.add_stream("aac", rate=16000)
        samples = (np.sin(np.arange(16000) / 5.0) * 0.3).astype(np.float32)[None]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate = 16000
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _truncated(tmp_path) -> bytes:
    path = tmp_path / "t.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(40):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    return data[: len(data) * 6 // 10]  # the index (moov) is intact, the frame data is not


def test_bad_videos_raise_typed_errors(tmp_path):
    with pytest.raises(VideoError, match="no video stream"):
        decode_video(_with_audio("mp4", video_track=False), 4)
    with pytest.raises(VideoError, match="no frames"):
        decode_video(_with_audio("matroska", video_track=True), 4)
    with pytest.raises(VideoError, match="partial"):
        decode_video(_truncated(tmp_path), 4)
    good = encode_video("mp4", "libx264", 20)
    with pytest.raises(MediaDecodeError):  # index at the end: a cut file cannot even be opened
        decode_video(good[: len(good) // 2], 4)
    with pytest.raises(MediaDecodeError):
        decode_video(np.random.default_rng(1).bytes(50_000), 4)
    with pytest.raises(MediaDecodeError):
        decode_video(b"", 4)
    with pytest.raises(MediaTooLargeError):
        decode_video(good, 4, max_bytes=len(good) - 1)
    with pytest.raises(MediaTooLargeError):
        decode_video(good, 4, max_pixels=64 * 48 - 1)
    with pytest.raises(MediaDecodeError):
        decode_video(str(tmp_path / "missing.mp4"), 4)
    with pytest.raises(MediaDecodeError, match="exceeded"):
        decode_video(good, 4, timeout_s=0.0)
    for err in (VideoError, MediaDecodeError, MediaTooLargeError):
        assert issubclass(err, InputError)
