"""`CaptionProcessor` on a Dataset from `ray.data.read_images`: decoded uint8 arrays as image cells, ids
from `path`, and a typed refusal on the driver when there is neither an id nor a path column.

The pipeline's texts must equal the engine's on the original files' bytes: an array cell is encoded
losslessly, so the model sees exactly the pixels it would see decoding the file itself.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import ray
from PIL import Image

from models.errors import InputError
from pipeline.builder import CaptionProcessor
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for

pytestmark = pytest.mark.usefixtures("local_ray")


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def noise(h: int, w: int, seed: int, channels: int | None = 3) -> np.ndarray:
    shape = (h, w) if channels is None else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def config_for(model) -> JobConfig:
    return JobConfig(model=str(model), input="-", output="-", max_new_tokens=6, max_model_len=2048,
                     max_num_seqs=8, batch_size=4, preprocess_actors=(1, 1))


def test_read_images_dataset_equals_engine_on_the_files(tiny_ov_dir, tmp_path, watched, engine_texts):
    files = {"a.png": encoded(noise(40, 60, 1), "PNG"), "b.jpg": encoded(noise(90, 30, 2), "JPEG"),
             "c.png": encoded(noise(64, 64, 3, channels=4), "PNG")}  # RGBA: composited onto white either way
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    config = config_for(tiny_ov_dir)
    ds = ray.data.read_images(str(tmp_path), include_paths=True)
    out = {r["id"]: r for r in watched(lambda: CaptionProcessor(config)(ds).take_all())}
    # Ray reports the paths it read; the ids are those paths, the same on every run.
    assert sorted(out) == sorted(str(tmp_path / name) for name in files)
    want = engine_texts(config, [{"id": str(tmp_path / n), "image": data} for n, data in files.items()])
    for i, row in out.items():
        assert row["error"] is None, row["error"]
        assert row["text"] == want[i], i
    # anyres tiling follows each image's own size, so the prompts differ in length
    assert len({r["num_prompt_tokens"] for r in out.values()}) > 1


def test_dataset_without_id_or_path_is_refused_on_the_driver(tiny_ov_dir, tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(noise(20, 20, 4), "PNG"))
    ds = ray.data.read_images(str(tmp_path))  # no include_paths: rows hold only the array
    with pytest.raises(InputError, match="no id column 'id'.*include_paths=True") as info:
        CaptionProcessor(config_for(tiny_ov_dir))(ds)
    assert info.value.kind == "config_error"


def test_array_cells_prepare_like_their_png(tiny_ov_dir):
    """Grayscale HxW, HxWx1 and RGB arrays give the prompt and pixels of the same image as a PNG file;
    a list cell of arrays is one multi-image request; other dtypes/shapes are typed row errors."""
    codec = codec_for(tiny_ov_dir, config_for(tiny_ov_dir))
    gray, rgb = noise(30, 50, 5, channels=None), noise(50, 30, 6)
    for array in (gray, gray[..., None], rgb):
        assert codec.prepare({"image": array}) == codec.prepare({"image": encoded(array.squeeze(), "PNG")})
    stacked = np.stack([rgb, noise(50, 30, 7)])
    assert codec.prepare({"image": stacked}) == codec.prepare({"image": [encoded(a, "PNG") for a in stacked]})
    for bad in (rgb.astype(np.float32), noise(10, 10, 8, channels=2)):
        with pytest.raises(InputError) as info:
            codec.prepare({"image": bad})
        assert info.value.kind == "bad_input"
