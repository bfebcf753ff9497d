"""pipeline/context_len.py: the model-aware default `--max-model-len`.

Checked on the real 0.5B / 11B processor and tokenizer files (no weights needed): ordinary photos of every
size through the real OneVision processor fit the default (the old 4096 made most of them `too_long`), a
video at --num-frames fits, Llama-3.2-Vision gets a short context, a user's value is kept, and a row that
still does not fit gets a `too_long` error naming the flag and the value it needs.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.onevision import anyres
from pipeline.context_len import TEXT_BUDGET, resolve_max_model_len
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for


def photo(w: int, h: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    img = Image.new(mode, (w, h), color=(90, 120, 40) if mode == "RGB" else 128)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_image_token_bound_covers_every_size(shared_checkpoints):
    import json

    cfg = json.loads((shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf" / "config.json").read_text())
    pins = cfg["image_grid_pinpoints"]
    bound = anyres.max_image_tokens(pins, 384, 14, 9)
    seen = max(anyres.num_image_tokens(h, w, pins, 384, 14, 9)
               for h in range(40, 3000, 37) for w in range(40, 3000, 41))
    assert seen <= bound <= seen + 200  # an upper bound, and a tight one (KV slots are sized from it)
    assert bound > 4096 + 4000  # why a fixed 4096 default failed on real photos


@pytest.mark.parametrize("size", [(1024, 768), (946, 1156), (4032, 3024), (6000, 4000), (800, 2400)])
def test_ordinary_photos_fit_the_default_context(shared_checkpoints, size):
    config = JobConfig(model=str(shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf"), input="-", output="-")
    resolved = resolve_max_model_len(config)
    ids, _ = codec_for(config.model, config).prepare({"id": "p", "image": photo(*size)})
    assert len(ids) + config.max_new_tokens <= resolved.max_model_len
    assert len(ids) > 4096 - config.max_new_tokens or size[0] * size[1] < 2_000_000  # big photos really are long


def test_video_at_num_frames_and_per_row_prompts_are_covered(shared_checkpoints):
    ov = str(shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf")
    many_frames = resolve_max_model_len(JobConfig(model=ov, input="-", output="-", num_frames=64)).max_model_len
    assert many_frames >= 64 * 196 + 1 + 128  # 64 frames of 196 pooled tokens outgrow any image
    fixed = resolve_max_model_len(JobConfig(model=ov, input="-", output="-")).max_model_len
    column = resolve_max_model_len(JobConfig(model=ov, input="-", output="-", prompt=None,
                                             prompt_column="q")).max_model_len
    assert fixed < column <= fixed + TEXT_BUDGET


def test_mllama_gets_a_short_context_and_user_values_win(shared_checkpoints):
    mllama = str(shared_checkpoints / "Llama-3.2-11B-Vision-Instruct")
    config = JobConfig(model=mllama, input="-", output="-", max_new_tokens=64)
    derived = resolve_max_model_len(config).max_model_len
    ids, _ = codec_for(mllama, config).prepare({"id": "p", "image": photo(1120, 1120)})
    assert derived == len(ids) + 64  # the image is one cross-attended token: the prompt is the whole need
    assert resolve_max_model_len(JobConfig(model=mllama, input="-", output="-", max_model_len=777)).max_model_len == 777
    capped = JobConfig(model=mllama, input="-", output="-", max_new_tokens=200_000)
    assert resolve_max_model_len(capped).max_model_len == 131072  # max_position_embeddings


def test_too_long_names_the_flag_and_the_value_needed(tiny_ov_dir):
    from pipeline.preprocess_stage import PreprocessStage

    config = JobConfig(model=str(tiny_ov_dir), input="-", output="-", max_new_tokens=8, max_model_len=40)
    stage = PreprocessStage(config)
    try:
        out = stage({"id": np.array(["a"], dtype=object), "image": np.array([photo(300, 200)], dtype=object)})
    finally:
        stage.worker.close()
    err = out["error"][0]
    assert err.startswith("too_long:") and "--max-model-len" in err
    ids, _ = codec_for(config.model, config).prepare({"id": "a", "image": photo(300, 200)})
    assert f"--max-model-len {len(ids) + 8} or more" in err
