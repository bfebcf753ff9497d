"""Render a checkpoint's chat template in a sandbox, exactly as transformers' `apply_chat_template` does.

Contract:
- `ChatTemplate.from_dir(path)` reads the template from `chat_template.jinja`, else `chat_template.json`
  (key `chat_template`), else `tokenizer_config.json` (key `chat_template`, a string or a list of named
  templates), and the special-token strings (`bos_token`, ...) from `tokenizer_config.json` /
  `special_tokens_map.json`, which the template sees as variables like transformers passes them.
- `render(messages, add_generation_prompt=True, **kwargs)` returns the same string as
  `processor.apply_chat_template(messages, tokenize=False, ...)` for plain-data messages; extra kwargs
  (e.g. `date_string`) become template variables and override the special tokens.
- Templates are untrusted: they run in `ImmutableSandboxedEnvironment`, access to unsafe attributes
  raises instead of rendering empty, and the template only ever sees plain JSON-like copies of the
  inputs (media objects become "<TypeName>" placeholders, so none of their methods are reachable).
- Every failure to render one request (`raise_exception`, sandbox violation, a template bug on these
  messages, malformed messages) raises `PromptError`, as does `ChatTemplate(source)` on a template that
  does not compile; `from_dir` raises `CheckpointError` instead when the directory's own template is
  missing or does not compile (a job should stop there rather than fail every row).
- `user_turn(prompt, num_images, num_videos)` is the `--prompt TEXT` convention: media first, then text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from models.errors import CheckpointError, PromptError

# Names transformers passes from `tokenizer.special_tokens_map` into every template.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Jinja releases before 3.1.6 have published sandbox escapes; templates are untrusted code.
if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
    raise ImportError(f"chat templates need jinja2>=3.1.6 (sandbox fixes), found {jinja2.__version__}")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; we only render it."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


class _Sandbox(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Jinja's default returns an Undefined that prints as "" - a probing template would render
        # silently. Fail loudly instead so the row is reported.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, so templates cannot plant dunders on it."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # No named `self`, so a template may still call namespace(self=...), as with jinja's Namespace.
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore attributes on a namespace: {name!r}")


class _DictFactory:
    """`dict(...)` for templates without handing them the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes (<, >, &, '); HF templates expect plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_env() -> _Sandbox:
    # trim_blocks/lstrip_blocks and the extension set are what transformers uses; rendering differs otherwise.
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _Namespace
    return env


def _plain(value: Any) -> Any:
    """A plain-data copy: the template must never reach methods of caller objects (images, arrays...)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return _plain(value.item())  # numpy scalars (np.bool_(False) must stay falsy)
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Any) -> list[dict]:
    """Validate and copy messages as plain data (dropping None values, OpenAI `image_url` -> `image`)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise PromptError("messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PromptError(f"message {i} is not a dict: {type(message).__name__}")
        # transformers drops None values: templates test key presence and would render "None" otherwise.
        message = {k: v for k, v in _plain(message).items() if v is not None}
        if not isinstance(message.get("role"), str):
            raise PromptError(f"message {i} has no string 'role'")
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [_normalize_part(i, part) for part in content]
        elif content is not None and not isinstance(content, str):
            raise PromptError(f"message {i} content must be a string or a list of parts")
        out.append(message)
    return out


def _normalize_part(i: int, part: Any) -> dict:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise PromptError(f"message {i} has a content part without a string 'type'")
    if part["type"] == "image_url" and "image_url" in part:
        url = part["image_url"]
        return {"type": "image", "url": url.get("url", "") if isinstance(url, dict) else url}
    if part["type"] == "text" and not isinstance(part.get("text"), str):
        raise PromptError(f"message {i} has a text part without a string 'text'")
    return part


def count_media(messages: list[dict]) -> tuple[int, int]:
    """(number of image parts, number of video parts) in normalized messages."""
    images = videos = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            images += sum(1 for part in content if part.get("type") == "image")
            videos += sum(1 for part in content if part.get("type") == "video")
    return images, videos


def user_turn(prompt: str, num_images: int = 0, num_videos: int = 0) -> list[dict]:
    """The `--prompt TEXT` convention: one user turn, the row's media first, then the text."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    if num_images < 0 or num_videos < 0:
        raise PromptError("media counts must be >= 0")
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "video"} for _ in range(num_videos)]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def _token_str(value: Any) -> str | None:
    # Special tokens are stored either as a string or as an AddedToken dict with "content".
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path, optional: bool = False) -> dict:
    if optional and not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def read_special_tokens(path: str | Path) -> dict[str, str]:
    """`{"bos_token": "<|begin_of_text|>", ...}`: the named special tokens a checkpoint declares.

    tokenizer_config.json wins over special_tokens_map.json (transformers ignores the latter when the
    config lists its added tokens); a key set to null there means "no such token".
    """
    path = Path(path)
    cfg = _read_json(path / "tokenizer_config.json", optional=True)
    stm = _read_json(path / "special_tokens_map.json", optional=True)
    special = {}
    for key in SPECIAL_TOKEN_NAMES:
        value = _token_str(cfg.get(key)) if key in cfg else _token_str(stm.get(key))
        if value is not None:
            special[key] = value
    return special


def _select(template: Any, name: str | None, where: Path) -> str:
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        template = template.get(name or "default")
    if not isinstance(template, str):
        raise CheckpointError(f"{where}: no chat template named {name or 'default'!r}")
    return template


class ChatTemplate:
    """A compiled, sandboxed chat template plus the special-token variables it is rendered with."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        self.source = source
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        try:
            self._template = _make_env().from_string(source)
        except jinja2.TemplateError as e:
            raise PromptError(f"chat template does not compile: {e}") from e

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> ChatTemplate:
        path = Path(path)
        tok_cfg = _read_json(path / "tokenizer_config.json", optional=True)
        if (path / "chat_template.jinja").is_file():
            source: Any = (path / "chat_template.jinja").read_text(encoding="utf-8")
        elif (path / "chat_template.json").is_file():
            source = _read_json(path / "chat_template.json").get("chat_template")
        elif "chat_template" in tok_cfg:
            source = tok_cfg["chat_template"]
        else:
            raise CheckpointError(f"{path}: no chat_template.jinja, chat_template.json or tokenizer_config template")
        source = _select(source, name, path)
        try:
            return cls(source, read_special_tokens(path))
        except PromptError as e:
            raise CheckpointError(f"{path}: {e}") from e

    def render(self, messages: Any, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        chat = normalize_messages(messages)
        variables = {**self.special_tokens, **_plain(kwargs)}
        variables.setdefault("tools", None)  # transformers always defines these two
        variables.setdefault("documents", None)
        try:
            return self._template.render(messages=chat, add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as e:  # raise_exception, SecurityError, undefined access...
            raise PromptError(f"chat template: {type(e).__name__}: {e}") from e
        except Exception as e:  # template bugs on unexpected input: 'str' + None, bad indexing...
            raise PromptError(f"chat template failed on these messages: {type(e).__name__}: {e}") from e
