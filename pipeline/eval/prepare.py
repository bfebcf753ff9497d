"""A task's data source -> one prepared Parquet input that `pipeline.builder.run_job` reads unchanged.

Contract: `prepare_task(task, prompts, root, limit)` writes `<root>/_prepared/<task>-<fingerprint>/`:
`data.parquet` with columns `id` (string), `image` (bytes, a path/URI string, or a list of bytes for
several image columns), `question`, `answers` (list<string>), `options` (list<string>) and one
`prompt__<setting>` column per prompt variant, rendered from the task's templates; then `_prepared.json`
(written last: its presence means the data is complete). Preparing the same task, prompts, source files
and limit again reuses the directory, so a nightly sweep copies its data once, and every cell of every
model reads the very same rows and prompts. Runs on the driver with pyarrow + fsspec (no Ray).

Sources: Parquet (file, directory or glob) or JSONL, local or any fsspec URL. Image cells may be bytes,
Hugging Face image structs ({"bytes", "path"}), or paths/URIs (relative paths are resolved against the
source file's directory).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import posixpath
import re
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.eval.tasks import TaskSpec, template_fields

BATCH_ROWS = 256
DONE_FILE = "_prepared.json"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Prepared:
    uri: str  # the directory run_job reads
    rows: int
    fingerprint: str


def source_files(task: TaskSpec) -> tuple[fsspec.AbstractFileSystem, list[str], str]:
    """(filesystem, files, format) of the task's input."""
    if not task.input:
        about = f" The task: {task.description}." if task.description else ""
        raise ValueError(f"task {task.name}: no input given (set `input:` on the task in the sweep).{about}")
    fmt = task.format
    if fmt == "auto":
        fmt = "jsonl" if re.search(r"\.jsonl?$", task.input) else "parquet"
    if fmt == "parquet":
        from pipeline.sources import parquet_files

        fs, files = parquet_files(task.input)
        return fs, files, fmt
    fs, path = fsspec.core.url_to_fs(task.input)
    if not fs.exists(path):
        raise ValueError(f"task {task.name}: input {task.input} does not exist")
    return fs, [path], fmt


def _listing_fingerprint(fs, files: list[str]) -> str:
    entries = [(f, fs.info(f).get("size")) for f in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def prepare_task(task: TaskSpec, prompts: dict[str, TaskSpec], root: str, limit: int | None = None) -> Prepared:
    """`prompts` maps setting name -> the task as that setting runs it (its templates are rendered)."""
    fs, files, fmt = source_files(task)
    blob = json.dumps({"task": task.fingerprint(), "prompts": {k: [v.prompt, v.mc_prompt] for k, v in prompts.items()},
                       "files": _listing_fingerprint(fs, files), "limit": limit}, sort_keys=True)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    out_fs, out_root = fsspec.core.url_to_fs(root)
    directory = posixpath.join(out_root, "_prepared", f"{task.name}-{fingerprint}")
    uri = root.rstrip("/") + f"/_prepared/{task.name}-{fingerprint}"
    done = posixpath.join(directory, DONE_FILE)
    if out_fs.exists(done):
        return Prepared(uri, json.loads(out_fs.cat(done))["rows"], fingerprint)
    tables = []
    rows = 0
    for table in _read_batches(fs, files, fmt, task):
        if limit is not None:
            table = table.slice(0, max(0, limit - rows))
        if table.num_rows:
            tables.append(_transform(table, task, prompts, base=table.schema.metadata[b"source"].decode()))
            rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    if not tables:
        raise ValueError(f"task {task.name}: input {task.input} has no rows")
    data = io.BytesIO()
    pq.write_table(pa.concat_tables(tables, promote_options="default"), data)
    out_fs.makedirs(directory, exist_ok=True)
    tmp = posixpath.join(directory, f".tmp-{uuid.uuid4().hex[:8]}.parquet")
    with out_fs.open(tmp, "wb") as f:
        f.write(data.getvalue())
    out_fs.mv(tmp, posixpath.join(directory, "data.parquet"))
    with out_fs.open(done, "w") as f:
        json.dump({"rows": rows, "fingerprint": fingerprint, "task": task.name, "input": task.input}, f)
    return Prepared(uri, rows, fingerprint)


def _read_batches(fs, files: list[str], fmt: str, task: TaskSpec):
    """pyarrow tables of at most BATCH_ROWS source rows, with a `__row` column (row number in its file)
    and the file's directory in the schema metadata (for relative media paths)."""
    for name in files:
        base = posixpath.dirname(name)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        base = base if protocol in ("file", "local") else f"{protocol}://{base}"
        start = 0
        if fmt == "parquet":
            with fs.open(name, "rb") as f:
                pf = pq.ParquetFile(f)
                wanted = [c for c in _columns(task, pf.schema_arrow.names) if c in pf.schema_arrow.names]
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                    yield _tagged(pa.Table.from_batches([batch]), name, base, start)
                    start += batch.num_rows
        else:
            with fs.open(name, "r", encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            for i in range(0, len(records), BATCH_ROWS):
                chunk = records[i:i + BATCH_ROWS]
                yield _tagged(pa.Table.from_pydict({k: [r.get(k) for r in chunk] for k in chunk[0]}), name, base, i)


def _tagged(table: pa.Table, name: str, base: str, start: int) -> pa.Table:
    table = table.append_column("__row", pa.array([f"{posixpath.basename(name)}:{start + i}"
                                                   for i in range(table.num_rows)]))
    return table.replace_schema_metadata({b"source": base.encode()})


def _columns(task: TaskSpec, available: list[str]) -> list[str]:
    named = [task.id_column, *task.image_columns, task.question_column, task.answers_column, task.options_column]
    extra = template_fields(task.prompt) | template_fields(task.mc_prompt or "")
    return [c for c in named if c] + sorted(c for c in extra - {"question", "options"} if c in available)


def _transform(table: pa.Table, task: TaskSpec, prompts: dict[str, TaskSpec], base: str) -> pa.Table:
    cols = table.column_names
    needed = [c for c in (task.id_column, task.question_column, task.answers_column, task.options_column) if c]
    missing = [c for c in needed if c not in cols]
    images = [c for c in task.image_columns if c in cols]
    if missing or not images:
        lacking = missing + ([] if images else list(task.image_columns))
        raise ValueError(f"task {task.name}: input lacks columns {lacking} (has {[c for c in cols if c != '__row']})")
    data = table.to_pydict()
    n = table.num_rows
    ids = [str(x) for x in data[task.id_column]] if task.id_column else data["__row"]
    questions = [None if v is None else str(v) for v in data[task.question_column]] if task.question_column \
        else [None] * n
    answers = [_answers(v) for v in data[task.answers_column]] if task.answers_column else [[] for _ in range(n)]
    options = [_options(v) for v in data[task.options_column]] if task.options_column else [[] for _ in range(n)]
    out = {"id": pa.array(ids, pa.string()), "image": _image_column([data[c] for c in images], base),
           "question": pa.array(questions, pa.string()), "answers": pa.array(answers, pa.list_(pa.string())),
           "options": pa.array(options, pa.list_(pa.string()))}
    for setting, spec in prompts.items():
        rendered = []
        for i in range(n):
            fields = {k: ("" if v[i] is None else str(v[i])) for k, v in data.items()}
            fields.update(question=questions[i] or "", options=format_options(options[i]))
            template = spec.mc_prompt if options[i] and spec.mc_prompt else spec.prompt
            try:
                rendered.append(template.format(**fields))
            except (KeyError, IndexError) as exc:
                raise ValueError(f"task {task.name}, setting {setting}: prompt template names {exc} which the "
                                 f"input does not have (columns: {sorted(data)})") from None
        out[f"prompt__{setting}"] = pa.array(rendered, pa.string())
    return pa.table(out)


def format_options(options: list[str]) -> str:
    return "\n".join(f"{_LETTERS[i]}. {o}" for i, o in enumerate(options))


def _parse_list(value: str):
    text = value.strip()
    if not text.startswith("["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)  # MMMU stores options as a Python list literal
        except (ValueError, SyntaxError):
            return None


def _answers(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parsed = _parse_list(value)
        value = parsed if isinstance(parsed, list) else [value]
    if not isinstance(value, list | tuple):
        value = [value]
    return [str(v["answer"]) if isinstance(v, dict) else str(v) for v in value if v is not None]


def _options(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parsed = _parse_list(value)
        return [str(v) for v in parsed] if isinstance(parsed, list) else []
    return [str(v) for v in value]


def _resolve(path: str, base: str) -> str:
    return path if "://" in path or path.startswith("/") else posixpath.join(base, path)


def _image_cell(value, base: str):
    """bytes stay bytes; an HF image struct gives its bytes (or its path); paths are made absolute."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        return _resolve(value, base)
    return value


def _image_column(columns: list[list], base: str) -> pa.Array:
    if len(columns) == 1:
        cells = [_image_cell(v, base) for v in columns[0]]
        kinds = {type(c) for c in cells if c is not None}
        if kinds <= {str}:
            return pa.array(cells, pa.string())
        return pa.array([_read(c) if isinstance(c, str) else c for c in cells], pa.binary())
    # Several image columns (MMMU's image_1..image_7): a list of the row's images, as bytes.
    rows = []
    for cells in zip(*columns, strict=True):
        images = [_image_cell(c, base) for c in cells]
        rows.append([_read(c) if isinstance(c, str) else c for c in images if c is not None])
    return pa.array(rows, pa.list_(pa.binary()))


def _read(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()
