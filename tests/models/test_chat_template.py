"""models/chat_template.py: renders exactly what transformers' processors render, and safely.

The references are transformers' own processors loaded from the real checkpoint metadata in
../shared/checkpoints (read only). The Llama template prints today's date unless `date_string` is given,
so every parity case passes a fixed one to both sides.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from models.chat_template import ChatTemplate, count_media, normalize_messages, user_turn
from models.errors import CheckpointError, PromptError

DATE = "07 Mar 2025"


def img():
    return {"type": "image"}


def vid():
    return {"type": "video"}


def txt(t):
    return {"type": "text", "text": t}


COMMON_CASES = {
    "image_text": [{"role": "user", "content": [img(), txt("Describe this image in detail.")]}],
    "two_images": [{"role": "user", "content": [img(), img(), txt("What differs between these?")]}],
    "text_only": [{"role": "user", "content": [txt("Write a haiku about GPUs.")]}],
    "string_content": [{"role": "user", "content": "Plain string content, with  spaces\nand lines."}],
    "multi_turn": [
        {"role": "user", "content": [img(), txt("What is in the picture?")]},
        {"role": "assistant", "content": [txt("A cat sitting on a mat.")]},
        {"role": "user", "content": [txt("What colour is it?")]},
    ],
    "multi_turn_text": [
        {"role": "user", "content": [txt("Hi!")]},
        {"role": "assistant", "content": [txt("Hello. How can I help?")]},
        {"role": "user", "content": [txt("Tell me a joke about {{ braces }} and <tags>.")]},
    ],
    "unicode": [{"role": "user", "content": [img(), txt("  Décris l'image 🐱 — 日本語で  ")]}],
}
MLLAMA_CASES = {
    **COMMON_CASES,
    "system_text": [{"role": "system", "content": "  You are terse.  "},
                    {"role": "user", "content": [txt("Summarise the plot of Hamlet.")]}],
}
OV_CASES = {
    **COMMON_CASES,
    "system": [{"role": "system", "content": [txt("You are a helpful assistant.")]},
               {"role": "user", "content": [img(), txt("Caption it.")]}],
    "video": [{"role": "user", "content": [vid(), txt("What happens in this video?")]}],
    "image_and_video": [{"role": "user", "content": [txt("Compare"), vid(), img(), txt("these two.")]}],
}


@pytest.fixture(scope="module")
def mllama_dir(shared_checkpoints):
    return shared_checkpoints / "Llama-3.2-11B-Vision-Instruct"


@pytest.fixture(scope="module")
def ov_dir(shared_checkpoints):
    return shared_checkpoints / "llava-onevision-qwen2-0.5b-ov-hf"


@pytest.fixture(scope="module")
def hf_mllama(mllama_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(mllama_dir)


@pytest.fixture(scope="module")
def hf_ov(ov_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(ov_dir)


@pytest.mark.parametrize("case", sorted(MLLAMA_CASES))
@pytest.mark.parametrize("gen", [True, False])
def test_mllama_matches_hf(case, gen, mllama_dir, hf_mllama):
    msgs = MLLAMA_CASES[case]
    ours = ChatTemplate.from_dir(mllama_dir).render(msgs, add_generation_prompt=gen, date_string=DATE)
    ref = hf_mllama.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, date_string=DATE)
    assert ours == ref
    assert ours.startswith("<|begin_of_text|>") and ours.count("<|begin_of_text|>") == 1


@pytest.mark.parametrize("case", sorted(OV_CASES))
@pytest.mark.parametrize("gen", [True, False])
def test_onevision_matches_hf(case, gen, ov_dir, hf_ov):
    msgs = OV_CASES[case]
    ours = ChatTemplate.from_dir(ov_dir).render(msgs, add_generation_prompt=gen)
    assert ours == hf_ov.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_mllama_default_date_is_today_like_hf(mllama_dir, hf_mllama):
    msgs = COMMON_CASES["text_only"]
    before = datetime.now().strftime("%d %b %Y")
    ours = ChatTemplate.from_dir(mllama_dir).render(msgs)
    ref = hf_mllama.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if datetime.now().strftime("%d %b %Y") != before:
        pytest.skip("midnight passed while rendering")
    assert ours == ref and f"Today Date: {before}\n" in ours


def test_mllama_image_with_system_prompt_is_a_prompt_error(mllama_dir):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [img(), txt("Hi")]}]
    with pytest.raises(PromptError, match="incompatible with system messages") as e:
        ChatTemplate.from_dir(mllama_dir).render(msgs)
    assert e.value.row_error().startswith("prompt_error: ")


@pytest.mark.parametrize("n_img,n_vid", [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)])
def test_user_turn_convention(n_img, n_vid, ov_dir, hf_ov):
    msgs = user_turn("Describe.", num_images=n_img, num_videos=n_vid)
    assert msgs == [{"role": "user", "content": [img()] * n_img + [vid()] * n_vid + [txt("Describe.")]}]
    assert count_media(normalize_messages(msgs)) == (n_img, n_vid)
    ours = ChatTemplate.from_dir(ov_dir).render(msgs)
    assert ours == hf_ov.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours.count("<image>") == n_img and ours.count("<video>") == n_vid


def test_user_turn_rejects_bad_input():
    with pytest.raises(PromptError):
        user_turn(None)  # type: ignore[arg-type]
    with pytest.raises(PromptError):
        user_turn("x", num_images=-1)


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",  # stock Jinja would print "" here; a probe must fail loudly
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['__builtins__'] }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ ''|attr('__class__') }}",
    "{{ messages['__class__'] }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ messages.append(1) }}",  # immutable sandbox: inputs cannot be modified
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
    "{% set ns = namespace(_hidden=1) %}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_raise_prompt_error(source):
    from jinja2.sandbox import SecurityError

    with pytest.raises(PromptError) as e:
        ChatTemplate(source).render(user_turn("hi"))
    assert isinstance(e.value.__cause__, SecurityError)


def test_caller_objects_never_reach_the_template():
    calls = []

    class Image:  # stands in for a PIL image: a method with side effects must not be callable
        def save(self, *a):
            calls.append(a)
            return "saved"

    msgs = [{"role": "user", "content": [{"type": "image", "image": Image()}, txt("x")]}]
    assert ChatTemplate("{{ messages[0].content[0].image }}").render(msgs) == "<Image>"
    with pytest.raises(PromptError):
        ChatTemplate("{{ messages[0].content[0].image.save('/tmp/x') }}").render(msgs)
    assert calls == []


@pytest.mark.parametrize("bad", [
    "not a list", [], [None], [{"content": "no role"}], [{"role": "user", "content": 3}],
    [{"role": "user", "content": [{"text": "no type"}]}], [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": ["bare string part"]}],
])
def test_malformed_messages_raise_prompt_error(bad, ov_dir):
    with pytest.raises(PromptError):
        ChatTemplate.from_dir(ov_dir).render(bad)


def test_template_runtime_failure_is_prompt_error():
    with pytest.raises(PromptError):
        ChatTemplate("{{ messages[0].content + 1 }}").render(user_turn("x"))


def test_helpers_and_tags_behave_like_hf():
    t = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}[{{ m.role }}]{% endgeneration %}{% endfor %}"
        "{{ {'a': '<b>&'} | tojson }}|{{ dict(k=1) | tojson(indent=None) }}|{{ bos_token }}|{{ extra }}",
        {"bos_token": "<s>"},
    )
    out = t.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], extra=7)
    assert out == '[user]{"a": "<b>&"}|{"k": 1}|<s>|7'


def test_openai_image_url_and_none_values_are_normalized(ov_dir, hf_ov):
    msgs = [{"role": "user", "name": None, "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.jpg"}}, txt("What is it?")]}]
    norm = normalize_messages(msgs)
    assert norm[0]["content"][0] == {"type": "image", "url": "http://x/y.jpg"} and "name" not in norm[0]
    ours = ChatTemplate.from_dir(ov_dir).render(msgs)
    assert ours == hf_ov.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def test_template_file_precedence(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<B>"}, "eos_token": None,
        "chat_template": [{"name": "default", "template": "cfg{{ bos_token }}"}, {"name": "x", "template": "X"}]}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<E>", "pad_token": "<P>"}))
    msgs = user_turn("q")
    t = ChatTemplate.from_dir(tmp_path)
    # tokenizer_config wins (eos null there), special_tokens_map fills what it does not mention
    assert t.render(msgs) == "cfg<B>" and t.special_tokens == {"bos_token": "<B>", "pad_token": "<P>"}
    assert ChatTemplate.from_dir(tmp_path, name="x").render(msgs) == "X"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "json"}))
    assert ChatTemplate.from_dir(tmp_path).render(msgs) == "json"
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert ChatTemplate.from_dir(tmp_path).render(msgs) == "jinja"


def test_broken_or_missing_template_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        ChatTemplate.from_dir(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% if %}")
    with pytest.raises(CheckpointError):
        ChatTemplate.from_dir(tmp_path)
    with pytest.raises(PromptError):
        ChatTemplate("{% for %}")
