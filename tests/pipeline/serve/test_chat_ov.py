"""/v1/chat/completions over the tiny LLaVA-OneVision on CPU, through a real uvicorn in this process: greedy
answers equal the batch job's path (its codec with the `--prompt` convention, then the engine) for the same
image and settings; streaming chunks have OpenAI's shapes and add up to the non-streamed text (stop strings
and seeded n > 1 included); the official `openai` client works against it."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import torch

from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for
from pipeline.serve.schemas import parse_request

PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def batch_path(tiny_ov_dir, kit):
    """What a caption job computes for a row with these images and `--prompt`: the codec, then the engine."""
    engine = build_engine(tiny_ov_dir, EngineConfig(max_num_seqs=2, max_model_len=kit.MAX_LEN, cuda_graphs=False,
                                                    dtype="float32", max_images_per_request=64), device="cpu")

    def run(images: list[bytes], prompt: str, max_new_tokens: int, video: bytes | None = None):
        config = JobConfig(model=str(tiny_ov_dir), input="-", output="-", prompt=prompt, max_model_len=kit.MAX_LEN,
                           max_new_tokens=max_new_tokens)
        codec = codec_for(tiny_ov_dir, config)
        ids, blob = codec.prepare({"id": "row", "image": images or None, "video": video})
        media = codec.unpack({"media": [blob]}, 0)
        [done] = engine.generate([Request("row", ids, media, SamplingParams(max_new_tokens=max_new_tokens))])
        return done, ids, media

    return run


def chat(http, service, messages, **fields):
    r = http.post("/v1/chat/completions", json={"model": service.model_name, "messages": messages, **fields})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("n_images", [1, 2])
def test_greedy_answer_equals_the_batch_path(http, ov_service, batch_path, kit, n_images):
    images = [kit.png(60 + 20 * k, 40, seed=k) for k in range(n_images)]
    want, ids, media = batch_path(images, PROMPT, 12)
    messages = kit.image_message(PROMPT, *images)
    # The engine inputs themselves: a tiny random model's text barely depends on the pixels.
    prepared = asyncio.run(ov_service.prepare(parse_request(json.dumps({"model": "m", "messages": messages}), 1)))
    assert prepared.prompt_ids == ids
    assert prepared.media.image_sizes == media.image_sizes
    assert all(torch.equal(a, b) for a, b in zip(prepared.media.images, media.images, strict=True))
    got = chat(http, ov_service, messages, max_tokens=12)
    assert got["object"] == "chat.completion" and got["id"].startswith("chatcmpl-")
    [choice] = got["choices"]
    assert choice["message"] == {"role": "assistant", "content": want.text, "refusal": None}
    assert choice["finish_reason"] == want.finish_reason
    assert got["usage"] == {"prompt_tokens": want.num_prompt_tokens, "completion_tokens": want.num_generated_tokens,
                            "total_tokens": want.num_prompt_tokens + want.num_generated_tokens}


def test_video_url_equals_the_batch_path(http, ov_service, batch_path):
    clip = (Path(__file__).parents[3] / "demo" / "media" / "clip_9frames.mp4").read_bytes()
    want, ids, media = batch_path([], PROMPT, 8, video=clip)
    url = "data:video/mp4;base64," + base64.b64encode(clip).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": PROMPT}]}]
    got = chat(http, ov_service, messages, max_tokens=8)
    assert got["choices"][0]["message"]["content"] == want.text
    assert got["usage"]["prompt_tokens"] == len(ids) == want.num_prompt_tokens


def test_text_only_request(http, ov_service):
    got = chat(http, ov_service, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
               max_completion_tokens=5)
    assert 1 <= got["usage"]["completion_tokens"] <= 5
    assert got["choices"][0]["finish_reason"] in ("stop", "length")


def stream(http, service, messages, **fields) -> list:
    body = {"model": service.model_name, "messages": messages, "stream": True, **fields}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return list(r.iter_lines())


def texts(chunks: list, n: int) -> list[str]:
    return ["".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                    if c["choices"] and c["choices"][0]["index"] == i) for i in range(n)]


def test_stream_chunks_add_up_to_the_answer(http, ov_service, kit):
    messages = kit.image_message(PROMPT, kit.png())
    whole = chat(http, ov_service, messages, max_tokens=16)
    events = kit.sse_events(stream(http, ov_service, messages, max_tokens=16, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert all("usage" in c for c in chunks)  # null on every chunk but the last, as OpenAI with include_usage
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *body, last, usage = chunks
    assert last["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in body)
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert texts(chunks, 1) == [whole["choices"][0]["message"]["content"]]
    assert len(body) > 2  # the text came in several deltas, not in one piece at the end

    plain = kit.sse_events(stream(http, ov_service, messages, max_tokens=16))
    assert all("usage" not in c for c in plain[:-1])  # without include_usage: no usage key, no usage chunk
    assert texts(plain[:-1], 1) == texts(chunks, 1)


def test_stop_strings_cut_streamed_and_whole_answers_alike(http, ov_service, kit):
    messages = kit.image_message(PROMPT, kit.png(seed=3))
    # Seeded sampling: greedy text of a tiny random model repeats one token, and every stop string would
    # then first occur inside the first delta. A seed makes the varied text reproducible.
    fields = dict(max_tokens=24, temperature=1.0, seed=11)
    chunks = kit.sse_events(stream(http, ov_service, messages, **fields))[:-1]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    deltas = [d for d in deltas if d]
    full = "".join(deltas)
    # A stop string whose first occurrence straddles two streamed deltas: the first part was already
    # decodable when the engine had not yet seen the whole stop string, so it must be held back.
    ends = [sum(map(len, deltas[: k + 1])) for k in range(len(deltas))]
    stop = next(s for k in range(len(deltas) - 1) for s in [deltas[k][-1:] + deltas[k + 1][:2]]
                if len(s) == 3 and any(full.find(s) < e < full.find(s) + 3 for e in ends))
    cut = chat(http, ov_service, messages, **fields, stop=[stop])
    assert cut["choices"][0]["message"]["content"] == full[: full.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = kit.sse_events(stream(http, ov_service, messages, **fields, stop=stop))
    assert texts(streamed[:-1], 1) == [full[: full.find(stop)]]


def test_seeded_choices_are_reproducible_streamed_or_not(http, ov_service, kit):
    messages = kit.image_message(PROMPT, kit.png(seed=4))
    fields = dict(max_tokens=10, n=3, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    a = chat(http, ov_service, messages, **fields)
    b = chat(http, ov_service, messages, **fields)
    answers = [c["message"]["content"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert answers == [c["message"]["content"] for c in b["choices"]]
    assert len(set(answers)) > 1  # choice i samples with seed + i
    one = chat(http, ov_service, messages, max_tokens=10)
    assert a["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]  # the prompt counts once for n choices
    assert 3 <= a["usage"]["completion_tokens"] <= 30
    streamed = kit.sse_events(stream(http, ov_service, messages, **fields))
    assert texts(streamed[:-1], 3) == answers


def test_official_openai_client(ov_server, ov_service, batch_path, kit):
    import openai

    image = kit.png(seed=5)
    want = batch_path([image], PROMPT, 12)[0]
    client = openai.OpenAI(base_url=ov_server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [ov_service.model_name]
    r = client.chat.completions.create(model=ov_service.model_name, messages=kit.image_message(PROMPT, image),
                                       max_tokens=12)
    assert r.choices[0].message.content == want.text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.num_prompt_tokens, want.num_generated_tokens)
    chunks = list(client.chat.completions.create(model=ov_service.model_name, max_tokens=12, stream=True,
                                                 messages=kit.image_message(PROMPT, image),
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.completion_tokens == want.num_generated_tokens
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"


def test_concurrent_requests_get_their_one_at_a_time_answers(http, ov_service, kit, monkeypatch):
    """32 requests from 16 threads share the engine's 4 slots: batching never changes an answer."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(ov_service, "max_pending", 64)
    bodies = [dict(messages=kit.image_message(f"Question {k}?", kit.png(40 + 7 * k, 50, seed=k)), max_tokens=6 + k % 5,
                   **({"temperature": 0.8, "seed": k} if k % 3 == 0 else {})) for k in range(32)]
    alone = [chat(http, ov_service, **b)["choices"][0]["message"]["content"] for b in bodies]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: chat(http, ov_service, **b)["choices"][0]["message"]["content"], bodies))
    assert together == alone
