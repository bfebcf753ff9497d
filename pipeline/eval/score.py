"""Score one sweep cell: its caption-pipeline output (part files with the kept `answers`/`options`/
`question` columns) -> `scores.parquet` (one row per input row) and the cell's aggregates.

Contract: `score_cell(cell_uri, task) -> dict` reads every part file of the cell (the sink's layout),
scores every row with each of the task's metrics, writes `<cell>/scores.parquet` (id, question, answers,
text, error, finish_reason, num_generated_tokens, `score` = the headline metric, `score__<metric>` for
the others) and returns {metric: Aggregate dict}. Error rows have no prediction and score 0. Runs on the
driver; imports no ray.
"""

from __future__ import annotations

import io
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.eval.metrics import aggregate, get_metric
from pipeline.eval.tasks import TaskSpec

SCORES_FILE = "scores.parquet"
COLUMNS = ["id", "question", "answers", "options", "text", "error", "finish_reason", "num_generated_tokens"]


def read_cell_output(cell_uri: str) -> pa.Table:
    """Every committed part file of the cell, rows sorted by id (so scores files compare across runs)."""
    fs, root = fsspec.core.url_to_fs(cell_uri)
    fs.invalidate_cache(root)
    parts = sorted(p for p in fs.ls(root, detail=False)
                   if posixpath.basename(p).startswith("part-") and p.endswith(".parquet"))
    tables = []
    for p in parts:
        with fs.open(p, "rb") as f:
            table = pq.read_table(f)
        tables.append(table.select([c for c in COLUMNS if c in table.column_names]))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in ("id", "text", "error")})
    table = pa.concat_tables(tables, promote_options="default")
    return table.sort_by("id")


def score_table(table: pa.Table, task: TaskSpec) -> tuple[pa.Table, dict[str, dict]]:
    """(per-row scores table, {metric: aggregate}) for a cell's output rows."""
    n = table.num_rows
    texts = table.column("text").to_pylist()
    errors = table.column("error").to_pylist()
    preds = [None if e is not None else (t or "") for t, e in zip(texts, errors, strict=True)]
    answers = table.column("answers").to_pylist() if "answers" in table.column_names else [[]] * n
    options = table.column("options").to_pylist() if "options" in table.column_names else [None] * n
    n_errors = sum(e is not None for e in errors)
    out = table
    results = {}
    for i, name in enumerate(task.metrics):
        rows, corpus = get_metric(name).score(preds, answers, options) if n else ([], None)
        results[name] = aggregate(rows, errors=n_errors, corpus=corpus).to_dict()
        out = out.append_column("score" if i == 0 else f"score__{name}", pa.array(rows, pa.float64()))
    return out, results


def score_cell(cell_uri: str, task: TaskSpec) -> dict[str, dict]:
    table, results = score_table(read_cell_output(cell_uri), task)
    fs, root = fsspec.core.url_to_fs(cell_uri)
    data = io.BytesIO()
    pq.write_table(table, data)
    # A PUT (S3) or a same-directory rename (local) never leaves a half-written scores file.
    final = posixpath.join(root, SCORES_FILE)
    tmp = posixpath.join(root, ".tmp-" + SCORES_FILE) if "file" in fs.protocol else final
    with fs.open(tmp, "wb") as f:
        f.write(data.getvalue())
    if tmp != final:
        fs.mv(tmp, final)
    return results
