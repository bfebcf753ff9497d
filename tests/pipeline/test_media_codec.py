"""The blob format media travel in between the CPU and GPU stages (pipeline/media_codec.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.media_codec import pack, unpack_arrays


def test_round_trip_keeps_names_dtypes_shapes_and_values():
    rng = np.random.default_rng(0)
    arrays = {"pixels": rng.integers(0, 256, (2, 3, 5, 7), dtype=np.uint8),
              "size": np.array([480, 640], dtype=np.int64), "scalar": np.array(3.5),
              "empty": np.zeros((0, 4), dtype=np.float32),
              "strided": np.arange(24, dtype=np.int16).reshape(4, 6)[:, ::2]}  # not contiguous
    out = unpack_arrays(pack(**arrays))
    assert list(out) == list(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and np.array_equal(out[k], v), k
    assert not out["pixels"].flags.writeable  # views into the blob: callers copy before writing


def test_refuses_objects_and_foreign_or_damaged_blobs():
    with pytest.raises(TypeError, match="object"):
        pack(bad=np.array([b"x", None], dtype=object))
    blob = pack(a=np.arange(10, dtype=np.int32))
    with pytest.raises(ValueError, match="not a media blob"):
        unpack_arrays(b"PK\x03\x04" + blob)
    with pytest.raises(ValueError, match="trailing"):
        unpack_arrays(blob + b"\0")
    with pytest.raises(ValueError):
        unpack_arrays(blob[:-4])  # truncated data
