"""The blob format media travel in between the CPU and GPU stages (pipeline/media_codec.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def png(h: int, w: int, seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_onevision_list_cell_is_one_multi_image_request(tiny_ov_dir, hf_ov_processor):
    """A list of images in the image cell: the prompt ids and pixels the reference processor makes for
    the same two images in one prompt (one square crop each, base + newline tokens each)."""
    import io

    from PIL import Image

    from pipeline.job_config import JobConfig
    from pipeline.media_codec import codec_for

    config = JobConfig(model=str(tiny_ov_dir), input="-", output="-", prompt="Compare them.")
    codec = codec_for(config.model, config)
    cells = [png(90, 60, 3), png(40, 200, 4)]
    ids, blob = codec.prepare({"id": "two", "image": cells})
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": "Compare them."}]}]
    text = hf_ov_processor.apply_chat_template(messages, add_generation_prompt=True)
    ref = hf_ov_processor(text=[text], images=[[Image.open(io.BytesIO(c)) for c in cells]], return_tensors="pt")
    assert ids == ref["input_ids"][0].tolist()
    media = codec.unpack({"media": [blob]}, 0)
    assert media.image_sizes == [(90, 60), (40, 200)] and [m.shape[0] for m in media.images] == [1, 1]
    ref_px = ref["pixel_values"][:, 0]  # one crop per image, padded after it
    ours = torch.stack([codec.images.normalize(m[0]) for m in media.images])
    assert torch.allclose(ours, ref_px, atol=1e-6)
    single, _ = codec.prepare({"id": "one", "image": cells[:1]})  # a one-item list is the anyres single image
    assert single == codec.prepare({"id": "one", "image": cells[0]})[0]


def test_mllama_refuses_several_images_per_row_with_a_typed_error(tiny_mllama_dir):
    from models.errors import InputError
    from pipeline.job_config import JobConfig
    from pipeline.media_codec import codec_for

    codec = codec_for(str(tiny_mllama_dir), JobConfig(model=str(tiny_mllama_dir), input="-", output="-"))
    with pytest.raises(InputError) as err:
        codec.prepare({"id": "two", "image": [png(30, 30, 1), png(30, 40, 2)]})
    assert err.value.row_error() == ("unsupported_media: Llama-3.2-Vision takes at most 1 image(s) per row; "
                                     "this row has 2")
    codec.prepare({"id": "one", "image": [png(30, 30, 1)]})  # a list of one is fine
