"""Task specs: which data, which columns, which prompt, which generation settings, which metrics.

Contract: `TaskSpec` is frozen; `load_task(entry)` turns a sweep's task entry into one. An entry is a
built-in name (`"vqav2"`), or a mapping with `name` (built-in or new), optional `spec` (a YAML file with
TaskSpec fields) and any TaskSpec field overriding those (typically `input`). Unknown keys, unknown
metrics and templates naming fields a row cannot have are `ValueError`s with one line saying which.

Prompt templates are `str.format` strings over `{question}`, `{options}` (the options as "A. text" lines)
and any other column of the source (e.g. `{ocr_tokens}`); the rendered text follows the row's media in
one user turn, exactly as `jobs/caption.py --prompt-column` does. `mc_prompt` (when set) replaces
`prompt` for rows that have options (MMMU mixes multiple-choice and open questions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.eval.metrics import METRICS

FORMATS = ("auto", "parquet", "jsonl")
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metrics: tuple[str, ...]  # the first is the headline metric of the results table
    prompt: str = "{question}\n" + SHORT_ANSWER
    mc_prompt: str | None = None
    input: str | None = None  # Parquet file/dir/glob or JSONL file, local or s3://; the sweep usually sets it
    format: str = "auto"
    id_column: str | None = "id"  # None: ids are "<file name>:<row number>" (for exports without ids)
    image_columns: tuple[str, ...] = ("image",)  # several: one request with the row's images as a list
    question_column: str | None = "question"
    answers_column: str | None = "answers"  # a list of strings, a string, a list of {"answer": ...} or JSON
    options_column: str | None = None  # a list, or its JSON / Python-literal string (MMMU)
    max_new_tokens: int = 16
    temperature: float = 0.0
    description: str = ""

    def __post_init__(self):
        if not self.metrics:
            raise ValueError(f"task {self.name}: give at least one metric")
        for m in self.metrics:
            if m not in METRICS:
                raise ValueError(f"task {self.name}: unknown metric {m!r} (known: {', '.join(sorted(METRICS))})")
        if self.format not in FORMATS:
            raise ValueError(f"task {self.name}: format must be one of {FORMATS}")
        if not self.image_columns:
            raise ValueError(f"task {self.name}: give at least one image column")
        for template in (self.prompt, self.mc_prompt):
            if template is not None:
                template_fields(template)  # a malformed template fails here, not on the first row

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"task {data.get('name', '?')}: unknown keys {unknown} (known: {sorted(names)})")
        data = dict(data)
        for key in ("metrics", "image_columns"):
            if isinstance(data.get(key), str):
                data[key] = (data[key],)
            elif data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def fingerprint(self) -> str:
        """What decides the prompts and the scores (not where the data lives: that is fingerprinted by
        the prepared input's file listing)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("input", "description")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def template_fields(template: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f}
    except ValueError as exc:
        raise ValueError(f"prompt template {template!r} is malformed: {exc}") from None


def load_task(entry: str | dict, base_dir: Path | None = None) -> TaskSpec:
    """A sweep's task entry -> TaskSpec (built-in, a YAML spec file, or inline fields)."""
    from pipeline.eval.builtin_tasks import BUILTIN_TASKS

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry and "spec" not in entry:
        raise ValueError(f"a task entry is a built-in name or a mapping with 'name' and/or 'spec', got {entry!r}")
    entry = dict(entry)
    data: dict = {}
    spec_file = entry.pop("spec", None)
    name = entry.get("name")
    if spec_file is not None:
        import yaml

        path = Path(spec_file)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read task spec {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"task spec {path} must be a mapping of TaskSpec fields")
        data.update(loaded)
        name = name or data.get("name") or path.stem
    elif name in BUILTIN_TASKS:
        data.update(dataclasses.asdict(BUILTIN_TASKS[name]))
    elif not {"metrics"} <= set(entry):
        raise ValueError(f"unknown task {name!r}: not a built-in ({', '.join(sorted(BUILTIN_TASKS))}); "
                         "give 'spec: file.yaml' or the fields inline (at least 'metrics')")
    data.update(entry)
    data["name"] = name
    return TaskSpec.from_dict(data)


@dataclass(frozen=True)
class Setting:
    """One column of the sweep's settings axis: a named variant of prompt and generation settings. Fields
    left None keep the task's own values."""
    name: str = "default"
    prompt: str | None = None
    mc_prompt: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)  # other JobConfig fields (top_p, num_frames, ...)

    def apply(self, task: TaskSpec) -> TaskSpec:
        """The task as this setting runs it."""
        changes = {k: getattr(self, k) for k in ("prompt", "mc_prompt", "max_new_tokens", "temperature")
                   if getattr(self, k) is not None}
        return dataclasses.replace(task, **changes)
