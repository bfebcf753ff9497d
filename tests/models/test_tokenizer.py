"""models/tokenizer.py: prompt ids equal the reference processors' input_ids; decode equals HF decode.

References are transformers' processors/tokenizers on the real checkpoint metadata (read only). For
OneVision the processor expands each `<image>`/`<video>` into many copies of that id; collapsing those
runs recovers the ids of the rendered prompt, which is what our tokenizer must produce (the expansion
itself is the processor's job).
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from models.chat_template import ChatTemplate, user_turn
from models.errors import CheckpointError, PromptError
from models.tokenizer import Tokenizer

DATE = "07 Mar 2025"
TEXTS = [
    "", " ", "Hello world", "  leading and trailing  ", "tabs\tand\nnewlines\r\n\n\n", "1234567890 3.14159 -42",
    "Décris l'image 🐱🐶 — 日本語のテキスト, 한국어, العربية", "don't won't I'm you're they've",
    "<|image|> inline special <|eot_id|> and <image> <video> <|im_end|> text", "a" * 300, "e\u0301 NFC vs NFD é",
    "```python\ndef f(x):\n    return {'k': [x]}\n```",
]
MSGS = {
    "image_text": user_turn("Describe this image in detail.", num_images=1),
    "two_images": user_turn("What differs between these?", num_images=2),
    "text_only": user_turn("Write a haiku about GPUs."),
    "multi_turn": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Colour?"}]},
    ],
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


@pytest.fixture(scope="module")
def tok_mllama(mllama_dir):
    return Tokenizer.from_dir(mllama_dir)


@pytest.fixture(scope="module")
def tok_ov(ov_dir):
    return Tokenizer.from_dir(ov_dir)


def ids_of(batch):
    ids = batch["input_ids"][0]
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def collapse(ids, counts):
    """Undo placeholder expansion: every item of media id `m` became `len/counts[m]` copies of `m`."""
    per_item = {m: ids.count(m) // n for m, n in counts.items() if n}
    out, k = [], 0
    while k < len(ids):
        step = per_item.get(ids[k], 1)
        assert ids[k:k + step] == [ids[k]] * step
        out.append(ids[k])
        k += step
    return out


@pytest.mark.parametrize("case", sorted(MSGS))
def test_mllama_prompt_ids_equal_processor(case, mllama_dir, hf_mllama, tok_mllama):
    prompt = ChatTemplate.from_dir(mllama_dir).render(MSGS[case], date_string=DATE)
    n = prompt.count("<|image|>")
    images = [Image.new("RGB", (48, 32), (i * 40, 90, 200)) for i in range(n)] or None
    ref = ids_of(hf_mllama(text=prompt, images=images))
    ours = tok_mllama.encode(prompt)
    assert ours == ref
    # exactly one BOS: the template emits it, neither the tokenizer nor the processor adds another
    assert ours[0] == tok_mllama.bos_id == 128000 and ours.count(128000) == 1
    assert ours.count(tok_mllama.token_to_id("<|image|>")) == n
    assert tok_mllama.encode(prompt, add_special_tokens=True) == ours


@pytest.mark.parametrize("case", [*sorted(MSGS), "video", "image_video"])
def test_onevision_prompt_ids_equal_processor_before_expansion(case, ov_dir, hf_ov, tok_ov):
    msgs = {"video": user_turn("What happens?", num_videos=1),
            "image_video": user_turn("Compare.", num_images=1, num_videos=1)}.get(case) or MSGS[case]
    prompt = ChatTemplate.from_dir(ov_dir).render(msgs)
    n_img, n_vid = prompt.count("<image>"), prompt.count("<video>")
    images = [Image.new("RGB", (40, 30), (i * 60, 10, 10)) for i in range(n_img)] or None
    videos = [np.zeros((4, 32, 32, 3), np.uint8)] * n_vid or None
    image_id, video_id = tok_ov.token_to_id("<image>"), tok_ov.token_to_id("<video>")
    ref = collapse(ids_of(hf_ov(text=prompt, images=images, videos=videos)), {image_id: n_img, video_id: n_vid})
    ours = tok_ov.encode(prompt)
    assert ours == ref == hf_ov.tokenizer(prompt)["input_ids"]
    assert ours.count(image_id) == n_img and ours.count(video_id) == n_vid


@pytest.mark.parametrize("which", ["mllama", "ov"])
def test_encode_equals_hf_tokenizer_on_odd_texts(which, hf_mllama, hf_ov, tok_mllama, tok_ov):
    hf, ours = (hf_mllama, tok_mllama) if which == "mllama" else (hf_ov, tok_ov)
    for text in TEXTS:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == \
                hf.tokenizer(text, add_special_tokens=special)["input_ids"], text
    assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
    with pytest.raises(PromptError):
        ours.encode(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["mllama", "ov"])
def test_decode_equals_hf_on_random_ids(which, hf_mllama, hf_ov, tok_mllama, tok_ov):
    hf, ours = (hf_mllama.tokenizer, tok_mllama) if which == "mllama" else (hf_ov.tokenizer, tok_ov)
    rng = random.Random(0)
    specials = sorted(ours.special_ids)
    assert len(specials) >= 5 and hf.convert_tokens_to_ids("<|im_end|>" if which == "ov" else "<|eot_id|>") in specials
    # real text ids too: random ids alone rarely form words/merges worth checking
    text_ids = ours.encode(" ".join(TEXTS))
    for _ in range(200):
        n = rng.randint(0, 40)
        pool = rng.choice(["vocab", "special", "text"])
        seq = [rng.randrange(ours.vocab_size) if pool == "vocab" or rng.random() < 0.3
               else rng.choice(specials) if pool == "special" or rng.random() < 0.3
               else rng.choice(text_ids) for _ in range(n)]
        for skip in (True, False):
            assert ours.decode(seq, skip_special_tokens=skip) == hf.decode(seq, skip_special_tokens=skip), seq
    assert ours.decode(text_ids) == hf.decode(text_ids, skip_special_tokens=True)
    # the model's embedding is padded past the tokenizer (OneVision: 152000 vs 151648): unknown ids vanish
    beyond = [ours.vocab_size + 5, *text_ids[:5], ours.vocab_size + 100]
    assert ours.decode(beyond) == hf.decode(beyond, skip_special_tokens=True) == ours.decode(text_ids[:5])


def test_special_and_stop_ids(tok_mllama, tok_ov, hf_mllama, hf_ov):
    assert tok_mllama.eos_ids == tok_mllama.stop_token_ids == (128001, 128008, 128009)
    assert (tok_mllama.bos_id, tok_mllama.eos_id, tok_mllama.pad_id) == (128000, 128009, 128004)
    assert tok_mllama.token_to_id("<|image|>") == 128256 and tok_mllama.id_to_token(128256) == "<|image|>"
    assert tok_ov.eos_ids == (151645,) and (tok_ov.bos_id, tok_ov.eos_id, tok_ov.pad_id) == (None, 151645, 151643)
    assert (tok_mllama.vocab_size, tok_ov.vocab_size) == (len(hf_mllama.tokenizer), len(hf_ov.tokenizer))
    assert tok_ov.token_to_id("<no such token>") is None


def test_stop_ids_fallbacks(tmp_path, ov_dir):
    shutil.copy(ov_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    assert Tokenizer.from_dir(tmp_path).eos_ids == (151643,)  # nothing else: the tokenizer's eos
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": [1, 2]}}))
    assert Tokenizer.from_dir(tmp_path).eos_ids == (1, 2)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 151645}))
    assert Tokenizer.from_dir(tmp_path).stop_token_ids == (151645,)


def test_added_tokens_are_reconciled(tmp_path, ov_dir):
    shutil.copy(ov_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<image>": 151646, "<extra>": 151648}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.token_to_id("<extra>") == 151648 and tok.encode("a<extra>b")[1] == 151648
    assert tok.decode([151648]) == "" and 151648 in tok.special_ids
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<clash>": 151646}))
    with pytest.raises(CheckpointError, match="151646"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("which", ["mllama", "ov"])
@pytest.mark.parametrize("skip", [True, False])
def test_incremental_detokenizer_concatenates_to_decode(which, skip, tok_mllama, tok_ov):
    tok = tok_mllama if which == "mllama" else tok_ov
    rng = random.Random(1)
    # multi-byte characters split over several byte-level tokens are the case that needs care
    text_ids = tok.encode("Le chat 🐱 est noir. 日本語のテキスト 🐶🐶 done.  ")
    specials = sorted(tok.special_ids)
    seqs = [text_ids, text_ids[:-1] + [tok.eos_ids[0]]]
    seqs += [[rng.choice(text_ids) if rng.random() < 0.7 else rng.choice(specials) if rng.random() < 0.5
              else rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 30))] for _ in range(50)]
    for seq in seqs:
        det = tok.detokenizer(skip_special_tokens=skip)
        deltas = [det.push(i) for i in seq] + [det.flush()]
        assert "".join(deltas) == det.text == tok.decode(seq, skip_special_tokens=skip)
        assert all("\ufffd" not in d for d in deltas[:-1]) or "\ufffd" in tok.decode(seq, skip)
