"""Request validation and media intake of the online endpoint, without a model: OpenAI-shaped 400s for
bad JSON, wrong types, unknown and unsupported fields; data: URLs decoded with their size bound checked
before decoding; http(s) and file access refused unless configured, and then only inside the allowed dir."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline.serve.messages import MediaLimits, split_media
from pipeline.serve.schemas import APIError, ChatRequest, parse_request

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**fields) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def refused(raw: bytes, max_n: int = 4) -> APIError:
    with pytest.raises(APIError) as info:
        parse_request(raw, max_n)
    assert info.value.status == 400
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}
    return info.value


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
    ({"n": 5}, "n", "invalid_value"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages.0.content",
     "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),
])
def test_refused_fields_name_their_param(fields, param, code):
    err = refused(body(**fields))
    assert err.param is not None and err.param.startswith(param), err.body()
    assert err.code == code


def test_bad_json_and_non_objects():
    assert refused(b"{not json").code == "invalid_json"
    assert refused(b"[1, 2]").code == "invalid_json"
    assert refused(b"\xff\xfe").code == "invalid_json"


def test_accepted_defaults_and_aliases():
    req = parse_request(body(logprobs=False, response_format={"type": "text"}, user="u1", presence_penalty=0,
                             max_tokens=5, max_completion_tokens=7, stop="END"), 4)
    assert req.max_new_tokens == 7  # the newer name wins
    assert req.stop_strings == ("END",)
    assert parse_request(body(max_tokens=5), 4).max_new_tokens == 5
    assert parse_request(body(), 4).max_new_tokens is None


def messages(*parts, role: str = "user") -> list:
    return ChatRequest.model_validate({**BASE, "messages": [{"role": role, "content": list(parts)}]}).messages


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_split_media_keeps_order_and_hides_urls(kit):
    a, b = kit.png(seed=1), kit.png(seed=2)
    msgs = messages(image(kit.data_url(a)), {"type": "text", "text": "and"}, image(kit.data_url(b)), role="developer")
    out, images, videos = split_media(msgs, MediaLimits())
    assert out == [{"role": "system", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                  {"type": "image"}]}]
    assert images == [a, b] and videos == []


@pytest.mark.parametrize(("url", "code"), [
    ("data:image/png;base64,@@@@", "invalid_base64"),
    ("data:image/png;base64,", "invalid_data_url"),
    ("data:image/png,rawbytes", "invalid_data_url"),
    ("data:image/png;base64," + base64.b64encode(b"x" * 4096).decode(), "media_too_large"),
    ("http://example.com/a.png", "unsupported_url"),
    ("file:///etc/passwd", "unsupported_url"),
    ("/etc/passwd", "unsupported_url"),
    ("ftp://example.com/a.png", "unsupported_url"),
])
def test_media_refusals(url, code):
    with pytest.raises(APIError) as info:
        split_media(messages(image(url)), MediaLimits(max_image_bytes=1024))
    assert (info.value.status, info.value.code) == (400, code)


def test_too_many_images_refused_before_any_decode():
    bad = image("data:image/png;base64,@@@@")  # would be invalid_base64 if it were decoded
    with pytest.raises(APIError) as info:
        split_media(messages(bad, bad, bad), MediaLimits(max_images=2))
    assert info.value.code == "too_many_images"


def test_local_files_only_inside_the_allowed_dir(tmp_path, kit):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.png").write_bytes(kit.png())
    (tmp_path / "secret.png").write_bytes(b"secret")
    limits = MediaLimits(local_media_dir=str(root))
    assert split_media(messages(image("a.png")), limits)[1] == [kit.png()]
    assert split_media(messages(image(f"file://{root}/a.png")), limits)[1] == [kit.png()]
    for url in ("../secret.png", f"file://{tmp_path}/secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(APIError) as info:
            split_media(messages(image(url)), limits)
        assert info.value.code == "unsupported_url"
