"""transformers' LLaVA-OneVision loads the bundled demo/model/ unchanged, and its greedy `generate` equals our
caption path (OneVisionCodec -> Engine, float32 on CPU) token for token on 20 demo rows: scenes of the demo
world with its questions and the caption prompt, and the two bundled clips (issue 13, criterion 3)."""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from demo import world
from demo.examples import CAPTION_PROMPT, qa_prompt
from models.video import decode_video
from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for

DEMO = Path(__file__).resolve().parents[2] / "demo"
EOS, PAD, NEW = 151645, 151643, 32


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo") / "model"
    shutil.copytree(DEMO / "model", d)
    return d


def demo_rows() -> list[dict]:
    rng = np.random.default_rng(123_456)
    rows = []
    for k in range(9):
        scene = world.sample_scene(rng)
        buf = io.BytesIO()
        world.render(scene).save(buf, format="PNG")
        question, _ = world.questions(scene, rng)[0]
        rows += [{"id": f"s{k}q", "image": buf.getvalue(), "prompt": qa_prompt(question)},
                 {"id": f"s{k}c", "image": buf.getvalue(), "prompt": CAPTION_PROMPT}]
    rows += [{"id": p.stem, "video": p.read_bytes(), "prompt": CAPTION_PROMPT}
             for p in sorted((DEMO / "media").glob("clip_*.mp4"))]
    return rows


def test_transformers_generate_equals_our_caption_path(demo_model):
    from PIL import Image
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    rows = demo_rows()
    assert len(rows) == 20
    codec = codec_for(demo_model, JobConfig(model=str(demo_model), input="-", output="-", prompt_column="prompt"))
    engine = build_engine(demo_model, EngineConfig(max_num_seqs=8, max_model_len=8192, cuda_graphs=False,
                                                   dtype="float32"), device="cpu")
    requests = []
    for row in rows:
        ids, blob = codec.prepare(row)
        requests.append(Request(row["id"], ids, codec.unpack({"media": [blob]}, 0), SamplingParams(max_new_tokens=NEW)))
    ours = {c.request_id: c.token_ids for c in engine.generate(requests)}

    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(demo_model, dtype=torch.float32).eval()
    proc = LlavaOnevisionProcessor.from_pretrained(demo_model)
    for row in rows:
        kind = "video" if "video" in row else "image"
        content = [{"type": kind}, {"type": "text", "text": row["prompt"]}]
        text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        if kind == "image":
            inputs = proc(text=[text], images=[Image.open(io.BytesIO(row["image"])).convert("RGB")],
                          return_tensors="pt")
        else:  # the frames our job samples, so both models see the same pixels
            frames = decode_video(row["video"], codec.num_frames).frames
            inputs = proc(text=[text], videos=[frames], return_tensors="pt")
        with torch.no_grad():
            out = hf.generate(**inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)
        ref = out[0, inputs["input_ids"].shape[1]:].tolist()
        ref = ref[: ref.index(EOS) + 1] if EOS in ref else ref
        assert ours[row["id"]] == ref, row["id"]
