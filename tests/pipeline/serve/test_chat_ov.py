"""/v1/chat/completions over the tiny LLaVA-OneVision on CPU, through a real uvicorn in this process: greedy
answers equal the batch job's path (its codec with the `--prompt` convention, then the engine) for the same
image and settings; streaming chunks have OpenAI's shapes and add up to the non-streamed text (stop strings
and seeded n > 1 included); the official `openai` client works against it."""

from __future__ import annotations

import pytest

from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for

PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def batch_path(tiny_ov_dir, kit):
    """What a caption job computes for a row with these images and `--prompt`: the codec, then the engine."""
    engine = build_engine(tiny_ov_dir, EngineConfig(max_num_seqs=2, max_model_len=kit.MAX_LEN, cuda_graphs=False,
                                                    dtype="float32", max_images_per_request=64), device="cpu")

    def run(images: list[bytes], prompt: str, max_new_tokens: int):
        config = JobConfig(model=str(tiny_ov_dir), input="-", output="-", prompt=prompt, max_model_len=kit.MAX_LEN,
                           max_new_tokens=max_new_tokens)
        codec = codec_for(tiny_ov_dir, config)
        ids, blob = codec.prepare({"id": "row", "image": images})
        request = Request("row", ids, codec.unpack({"media": [blob]}, 0), SamplingParams(max_new_tokens=max_new_tokens))
        [done] = engine.generate([request])
        return done

    return run


def chat(http, service, messages, **fields):
    r = http.post("/v1/chat/completions", json={"model": service.model_name, "messages": messages, **fields})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("n_images", [1, 2])
def test_greedy_answer_equals_the_batch_path(http, ov_service, batch_path, kit, n_images):
    images = [kit.png(60 + 20 * k, 40, seed=k) for k in range(n_images)]
    want = batch_path(images, PROMPT, 12)
    got = chat(http, ov_service, kit.image_message(PROMPT, *images), max_tokens=12)
    assert got["object"] == "chat.completion" and got["id"].startswith("chatcmpl-")
    [choice] = got["choices"]
    assert choice["message"] == {"role": "assistant", "content": want.text, "refusal": None}
    assert choice["finish_reason"] == want.finish_reason
    assert got["usage"] == {"prompt_tokens": want.num_prompt_tokens, "completion_tokens": want.num_generated_tokens,
                            "total_tokens": want.num_prompt_tokens + want.num_generated_tokens}


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
    full = chat(http, ov_service, messages, max_tokens=24)["choices"][0]["message"]["content"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3, full
    cut = chat(http, ov_service, messages, max_tokens=24, stop=[stop])
    assert cut["choices"][0]["message"]["content"] == full[: full.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = kit.sse_events(stream(http, ov_service, messages, max_tokens=24, stop=stop))
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
    want = batch_path([image], PROMPT, 12)
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
