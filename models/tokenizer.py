"""A checkpoint's tokenizer on the `tokenizers` library, token-for-token equal to transformers' fast tokenizer.

Contract:
- `Tokenizer.from_dir(path)` loads `tokenizer.json`, checks it against the added tokens that
  `tokenizer_config.json` / `added_tokens.json` declare (adding any missing one that lands on its declared
  id; a conflicting id is a `CheckpointError`), and reads the named special tokens and the stop ids.
- `encode(text)` returns the ids transformers' processor produces for a rendered chat prompt. The chat
  templates emit every special token themselves (Llama's emits `<|begin_of_text|>`), so the default is
  `add_special_tokens=False`. For these checkpoints it makes no difference: neither tokenizer.json has a
  post-processor that inserts tokens (Llama 3.2 Vision's is plain ByteLevel; the Mllama processor only
  prepends BOS textually when the prompt lacks one; OneVision/Qwen2 has no BOS at all).
- `decode(ids, skip_special_tokens=True)` equals transformers' `tokenizer.decode` (v5 skips the
  `clean_up_tokenization_spaces` pass for BPE models, so this is the backend decode). Ids outside the
  vocabulary (the model's embedding is padded beyond it) are dropped, as the backend does.
- `eos_ids` / `stop_token_ids`: `generation_config.json` `eos_token_id` (int or list), else `config.json`
  (top level or `text_config`), else the tokenizer's `eos_token`.
- `IncrementalDetokenizer` streams text whose concatenation equals `decode(all ids)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from models.chat_template import read_special_tokens
from models.errors import CheckpointError, PromptError


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def _id_list(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return ()


def _declared_added_tokens(path: Path) -> dict[int, dict]:
    """id -> AddedToken fields, from tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    declared: dict[int, dict] = {}
    for content, idx in _read_json(path / "added_tokens.json").items():
        declared[int(idx)] = {"content": content, "special": True}
    for idx, tok in (_read_json(path / "tokenizer_config.json").get("added_tokens_decoder") or {}).items():
        if isinstance(tok, dict) and isinstance(tok.get("content"), str):
            declared[int(idx)] = tok
    return declared


def _reconcile_added_tokens(backend: tokenizers.Tokenizer, path: Path) -> None:
    # The ids the model was trained with must be the ones tokenizer.json produces; a checkpoint whose
    # metadata files disagree is refused rather than silently shifting token ids.
    for idx, tok in sorted(_declared_added_tokens(path).items()):
        current = backend.id_to_token(idx)
        if current == tok["content"]:
            continue
        if current is not None or idx != backend.get_vocab_size(with_added_tokens=True):
            raise CheckpointError(f"{path}: added token {tok['content']!r} is declared with id {idx}, "
                                  f"but tokenizer.json has {current!r} there")
        fields = {k: tok[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in tok}
        added = tokenizers.AddedToken(tok["content"], special=bool(tok.get("special", False)), **fields)
        if tok.get("special", False):
            backend.add_special_tokens([added])
        else:
            backend.add_tokens([added])
        if backend.token_to_id(tok["content"]) != idx:
            raise CheckpointError(f"{path}: added token {tok['content']!r} did not land on id {idx}")


class Tokenizer:
    """Encode rendered prompts and decode generations with a checkpoint's own tokenizer files."""

    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str] | None = None,
                 eos_ids: Sequence[int] = (), pad_id: int | None = None):
        self.backend = backend
        self.special_tokens = dict(special_tokens or {})
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.pad_token = self.special_tokens.get("pad_token")
        self.bos_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_id = self.token_to_id(self.eos_token) if self.eos_token else None
        if not eos_ids and self.eos_id is not None:
            eos_ids = (self.eos_id,)
        self.eos_ids: tuple[int, ...] = tuple(eos_ids)
        self.pad_id = self.token_to_id(self.pad_token) if self.pad_token else pad_id
        self.special_ids = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise CheckpointError(f"{path}: no tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # the Rust loader raises plain Exception on malformed files
            raise CheckpointError(f"{path}/tokenizer.json: {e}") from e
        _reconcile_added_tokens(backend, path)
        gen = _read_json(path / "generation_config.json")
        cfg = _read_json(path / "config.json")
        text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
        eos_ids = (_id_list(gen.get("eos_token_id")) or _id_list(cfg.get("eos_token_id"))
                   or _id_list(text_cfg.get("eos_token_id")))
        pad_ids = _id_list(gen.get("pad_token_id")) or _id_list(cfg.get("pad_token_id"))
        return cls(backend, read_special_tokens(path), eos_ids, pad_ids[0] if pad_ids else None)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.eos_ids

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added tokens included (HF `len(tokenizer)`); the model may pad beyond."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self.backend.id_to_token(idx)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise PromptError(f"cannot tokenize a {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Many prompts at once (the Rust side may use several threads)."""
        for text in texts:
            if not isinstance(text, str):
                raise PromptError(f"cannot tokenize a {type(text).__name__}")
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        # Negative ids would overflow the Rust u32 conversion; they are never valid tokens.
        return self.backend.decode([int(i) for i in ids if i >= 0], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, seqs: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a growing id sequence into text deltas without re-decoding the whole sequence each step.

    Decodes only a short window: `ids[prefix:]` against `ids[prefix:read]`; text is emitted once it no
    longer ends in U+FFFD (a multi-byte character split across tokens). Some decoders strip a leading
    space from the first token of a sequence, which the window's already-emitted prefix absorbs.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids[:_read] are already emitted as text

    def _window(self, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[self._prefix:end], self.skip_special_tokens)

    def push(self, ids: int | Iterable[int]) -> str:
        """Append generated id(s); return the new text that is final (possibly "")."""
        self.ids.extend([ids] if isinstance(ids, int) else ids)
        before = self._window(self._read)
        now = self._window()
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        delta = now[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of generation: emit whatever is left (an incomplete character decodes to U+FFFD)."""
        before = self._window(self._read)
        delta = self._window()[len(before):]
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta
