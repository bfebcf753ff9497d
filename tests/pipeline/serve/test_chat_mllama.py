"""The endpoint over the tiny Llama-3.2-Vision (FastAPI's TestClient, no server): one image answers as the
batch job's path does; a second image or a video is refused with a 400 naming the limit, before decoding."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for
from pipeline.serve.app import build_app
from pipeline.serve.service import ChatService

PROMPT = "Describe the image."


@pytest.fixture(scope="module")
def mllama(tiny_mllama_dir, kit):
    service = ChatService(kit.serve_config(tiny_mllama_dir))
    yield service, TestClient(build_app(service))
    service.shutdown()


def test_one_image_equals_the_batch_path(mllama, tiny_mllama_dir, kit):
    service, client = mllama
    image = kit.png(50, 70, seed=1)
    config = JobConfig(model=str(tiny_mllama_dir), input="-", output="-", prompt=PROMPT, max_model_len=kit.MAX_LEN)
    codec = codec_for(tiny_mllama_dir, config)
    ids, blob = codec.prepare({"id": "row", "image": image})
    engine = build_engine(tiny_mllama_dir, EngineConfig(max_num_seqs=1, max_model_len=kit.MAX_LEN, cuda_graphs=False,
                                                        dtype="float32"), device="cpu")
    [want] = engine.generate([Request("row", ids, codec.unpack({"media": [blob]}, 0),
                                      SamplingParams(max_new_tokens=10))])
    r = client.post("/v1/chat/completions", json={"model": service.model_name, "max_tokens": 10,
                                                  "messages": kit.image_message(PROMPT, image)})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want.text
    assert r.json()["usage"]["prompt_tokens"] == len(ids)


def test_second_image_and_video_are_refused(mllama, kit):
    service, client = mllama
    two = client.post("/v1/chat/completions", json={"model": service.model_name,
                                                    "messages": kit.image_message("?", kit.png(), kit.png())})
    assert two.status_code == 400 and two.json()["error"]["code"] == "too_many_images"
    assert "at most 1" in two.json()["error"]["message"]
    video = {"type": "video_url", "video_url": {"url": kit.data_url(b"xx", "video/mp4")}}
    r = client.post("/v1/chat/completions", json={"model": service.model_name,
                                                  "messages": [{"role": "user", "content": [video]}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_videos"
    assert "takes no videos" in r.json()["error"]["message"]


def test_text_only_request(mllama):
    service, client = mllama
    r = client.post("/v1/chat/completions", json={"model": service.model_name, "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "Hello"}]})
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["usage"]["completion_tokens"] <= 4
