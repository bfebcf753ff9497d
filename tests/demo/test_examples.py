"""demo/examples.py: a training example's first turn is exactly the prompt the caption job sends, and the
loss sees only the answers."""

import io
import shutil

import numpy as np
import pytest
import torch

from demo import world
from demo.examples import CAPTION_PROMPT, ExampleMaker, collate, qa_prompt
from pipeline.job_config import JobConfig
from pipeline.onevision_codec import OneVisionCodec


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_meta")
    for f in ("config.json", "tokenizer.json", "chat_template.json", "preprocessor_config.json"):
        shutil.copyfile(f"demo/model/{f}", d / f)
    shutil.copytree("demo/model/video_processor", d / "video_processor")
    return d


def test_first_turn_is_the_caption_jobs_prompt(model_dir):
    maker = ExampleMaker(model_dir)
    scene = world.sample_scene(np.random.default_rng(3))
    buf = io.BytesIO()
    world.render(scene).save(buf, format="PNG")
    for prompt in (CAPTION_PROMPT, qa_prompt("How many shapes are there?")):
        codec = OneVisionCodec(model_dir, JobConfig(model=str(model_dir), input="-", output="-", prompt=prompt))
        want, _ = codec.prepare({"image": buf.getvalue()})
        media, n = maker.image_media(world.render(scene))
        assert maker.first_prompt(prompt, n, []) == want


def test_labels_cover_only_the_answers(model_dir):
    maker = ExampleMaker(model_dir)
    ex = maker.scene(np.random.default_rng(0), turns=4)
    answered = [t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != -100]
    assert [lab for lab in ex.labels if lab != -100] == answered
    assert answered.count(maker.im_end[0]) == 4  # four answers, each closed by <|im_end|>
    assert "background." in maker.tok.decode(answered)  # one of them the caption
    assert sum(t == maker.cfg.image_token_id for t in ex.ids) == ex.media.token_counts(maker.cfg)[0]
    clip = maker.clip(np.random.default_rng(1))
    assert sum(t == maker.cfg.video_token_id for t in clip.ids) == clip.media.token_counts(maker.cfg)[1]
    batch = collate([ex, clip], pad_id=0)
    assert batch["ids"].shape == batch["labels"].shape == (2, max(len(ex.ids), len(clip.ids)))
    assert int((batch["labels"] != -100).sum()) == len(answered) + sum(lab != -100 for lab in clip.labels)
    assert batch["media"][1].videos[0].dtype == torch.uint8
