"""A sweep: models x tasks x settings, every cell run through `pipeline.builder.run_job` (the caption job's
own pipeline: resume by id, error rows, stall watchdog) and then scored.

Sweep YAML:
    output: /data/evals                 # local or s3://; runs go to <output>/<run_id>/
    models: {ov-0.5b: /ckpt/llava-onevision-qwen2-0.5b-ov-hf}   # name: checkpoint (or name: {model: ..., replicas: 2})
    tasks: [vqav2: {input: s3://b/vqav2/val/}, {name: mine, spec: mine.yaml, input: data.jsonl}]
    settings: [{name: default}, {name: terse, prompt: "{question} One word.", max_new_tokens: 4}]
    limit: 500                          # rows per task (the first N of the source), optional
    job: {replicas: 2, batch_size: 64}  # JobConfig fields for every cell

Layout: `<output>/<run_id>/<model>/<task>/<setting>/` holds the pipeline's part files, `scores.parquet` and
`cell.json` (written last: the cell is finished). Re-running the same run id skips finished cells and
resumes the others from their committed rows. `cell.json` records the fingerprints of the model files,
task spec, settings, prepared data and the code version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from pipeline.eval.tasks import Setting, TaskSpec, load_task

CELL_FILE = "cell.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Sweep:
    output: str
    models: dict[str, dict]  # name -> {"model": path, **JobConfig overrides}
    tasks: tuple[TaskSpec, ...]
    settings: tuple[Setting, ...] = (Setting(),)
    limit: int | None = None
    job: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        blob = json.dumps([self.models, [t.fingerprint() for t in self.tasks], [t.input for t in self.tasks],
                           [dataclasses.asdict(s) for s in self.settings], self.limit, self.job],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(str(name)):
        raise ValueError(f"{kind} name {name!r} must be letters, digits, '_', '.' or '-' (it names a directory)")
    return str(name)


def load_sweep(path: str | Path, output: str | None = None) -> Sweep:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read --sweep {path}: {exc}") from None
    return sweep_from_dict(data, base_dir=path.parent, output=output)


def sweep_from_dict(data: dict, base_dir: Path | None = None, output: str | None = None) -> Sweep:
    known = {"output", "models", "tasks", "settings", "limit", "job"}
    if not isinstance(data, dict) or set(data) - known:
        got = sorted(data) if isinstance(data, dict) else repr(data)
        raise ValueError(f"a sweep is a mapping with keys {sorted(known)}; got {got}")
    output = output or data.get("output")
    if not output or not data.get("models") or not data.get("tasks"):
        raise ValueError("a sweep needs output, models and tasks")
    models = {}
    for name, value in dict(data["models"]).items():
        entry = {"model": value} if isinstance(value, str) else dict(value)
        if "model" not in entry:
            raise ValueError(f"model {name}: give its checkpoint as `model:`")
        models[_check_name("model", name)] = entry
    tasks = []
    for entry in data["tasks"]:
        if isinstance(entry, dict) and len(entry) == 1 and "name" not in entry and "spec" not in entry:
            (name, fields), = entry.items()  # the short form `- vqav2: {input: ...}`
            entry = {"name": name, **(fields or {})}
        task = load_task(entry, base_dir)
        _check_name("task", task.name)
        tasks.append(task)
    settings = []
    for entry in data.get("settings") or [{}]:
        entry = dict(entry)
        own = {f.name for f in dataclasses.fields(Setting)} - {"extra"}
        setting = Setting(**{k: v for k, v in entry.items() if k in own},
                          extra={k: v for k, v in entry.items() if k not in own})
        settings.append(dataclasses.replace(setting, name=_check_name("setting", setting.name)))
    if len({s.name for s in settings}) != len(settings):
        raise ValueError("setting names must be unique")
    return Sweep(output=str(output).rstrip("/"), models=models, tasks=tuple(tasks), settings=tuple(settings),
                 limit=data.get("limit"), job=dict(data.get("job") or {}))


def code_version() -> str:
    """The git commit of this checkout (plus '-dirty' with local edits), or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_fingerprint(model: str) -> str:
    """config.json's content and the weight files' names and sizes (cheap for a local or s3:// checkpoint)."""
    fs, root = fsspec.core.url_to_fs(model)
    h = hashlib.sha256()
    try:
        h.update(fs.cat(posixpath.join(root, "config.json")))
        for info in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
            if info["name"].endswith((".safetensors", ".json")):
                h.update(f"{posixpath.basename(info['name'])}:{info.get('size')}".encode())
    except (OSError, FileNotFoundError) as exc:
        raise ValueError(f"cannot read model {model}: {exc}") from None
    return h.hexdigest()[:16]


def read_json(uri: str) -> dict | None:
    fs, path = fsspec.core.url_to_fs(uri)
    return json.loads(fs.cat(path)) if fs.exists(path) else None


def write_json(uri: str, data) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
