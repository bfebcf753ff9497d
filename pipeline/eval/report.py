"""Results of a run and their history across runs: tables, deltas against an earlier run, a trend report.

Contract (all on the driver, fsspec paths, no ray):
- `write_results(output, run_id, records)` writes `<output>/<run_id>/results.parquet`, `results.json` and
  `results.md` (one row per cell and metric: value, n, errors, 95% CI, rows/s) and the run's history entry
  `<output>/history/<run_id>.json` (one file per run: append-only by construction, also on S3).
- `load_history(output)` -> runs in the order they finished; `compare(rows, base)` -> per-cell deltas;
  `trend_markdown(history)` -> `<output>/trend.md`: each model/task/setting/metric over the runs.
"""

from __future__ import annotations

import io
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.eval.sweep import read_json, write_json

KEY = ("model", "task", "setting", "metric")


def result_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        for metric, agg in r["metrics"].items():
            rows.append({"run_id": r["run_id"], "model": r["model"], "task": r["task"], "setting": r["setting"],
                         "metric": metric, "headline": metric == r["headline"], "value": agg["value"], "n": agg["n"],
                         "errors": agg["errors"], "ci_low": agg["ci_low"], "ci_high": agg["ci_high"],
                         "rows_per_s": r.get("rows_per_s"), "code_version": r.get("code_version"),
                         "finished_at": r.get("finished_at")})
    return rows


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def results_markdown(run_id: str, rows: list[dict], deltas: dict | None = None) -> str:
    head = "| model | task | setting | metric | value | 95% CI | n | errors | rows/s |"
    if deltas is not None:
        head += " delta |"
    lines = [f"# Evaluation run {run_id}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['model']} | {r['task']} | {r['setting']} | {r['metric']} | "
                f"{_fmt(r['value'])} | {_fmt(r['ci_low'])}-{_fmt(r['ci_high'])} | {r['n']} | {r['errors']} | "
                f"{_fmt(r['rows_per_s'], 2)} |")
        if deltas is not None:
            d = deltas.get(tuple(r[k] for k in KEY))
            line += f" {'-' if d is None else f'{d:+.4f}'} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_results(output: str, run_id: str, records: list[dict], deltas: dict | None = None) -> list[dict]:
    rows = result_rows(records)
    fs, root = fsspec.core.url_to_fs(f"{output}/{run_id}")
    fs.makedirs(root, exist_ok=True)
    data = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), data)
    with fs.open(posixpath.join(root, "results.parquet"), "wb") as f:
        f.write(data.getvalue())
    write_json(f"{output}/{run_id}/results.json", rows)
    with fs.open(posixpath.join(root, "results.md"), "w") as f:
        f.write(results_markdown(run_id, rows, deltas))
    write_json(f"{output}/history/{run_id}.json", {"run_id": run_id, "rows": rows,
                                                    "finished_at": max((r["finished_at"] or 0) for r in rows)})
    return rows


def load_history(output: str) -> list[dict]:
    """Every run's history entry, oldest first."""
    fs, root = fsspec.core.url_to_fs(f"{output}/history")
    if not fs.exists(root):
        return []
    runs = [read_json(f"{output}/history/{posixpath.basename(p)}") for p in fs.ls(root, detail=False)
            if p.endswith(".json")]
    return sorted((r for r in runs if r), key=lambda r: (r["finished_at"], r["run_id"]))


def baseline(history: list[dict], run_id: str, compare_to: str) -> dict | None:
    """`previous` (the latest other run) or an explicit run id."""
    others = [r for r in history if r["run_id"] != run_id]
    if compare_to == "previous":
        return others[-1] if others else None
    found = [r for r in others if r["run_id"] == compare_to]
    if not found:
        raise ValueError(f"--compare-to {compare_to}: no such run in the history")
    return found[0]


def compare(rows: list[dict], base: dict) -> dict[tuple, float]:
    """(model, task, setting, metric) -> value now minus value in `base`, for cells both runs have."""
    before = {tuple(r[k] for k in KEY): r["value"] for r in base["rows"]}
    return {tuple(r[k] for k in KEY): r["value"] - before[tuple(r[k] for k in KEY)]
            for r in rows if tuple(r[k] for k in KEY) in before}


def regressions(rows: list[dict], deltas: dict, max_regression: float | None, fail_below: float | None) -> list[str]:
    """Why the run should alert: a headline metric that fell by more than `max_regression` points (on the
    metric's own scale x 100 for [0, 1] metrics) or is below `fail_below`."""
    problems = []
    for r in rows:
        if not r["headline"]:
            continue
        key = tuple(r[k] for k in KEY)
        name = "/".join(key)
        if fail_below is not None and r["value"] < fail_below:
            problems.append(f"{name} = {r['value']:.4f} < --fail-below {fail_below}")
        d = deltas.get(key)
        if max_regression is not None and d is not None and -d * 100 > max_regression:
            problems.append(f"{name} fell {-d * 100:.2f} points (> --max-regression {max_regression})")
    return problems


def trend_markdown(history: list[dict]) -> str:
    """Each headline metric per model/task/setting over the runs (columns = runs, oldest first)."""
    run_ids = [h["run_id"] for h in history]
    series: dict[tuple, dict[str, float]] = {}
    for h in history:
        for r in h["rows"]:
            if r["headline"]:
                series.setdefault(tuple(r[k] for k in KEY), {})[h["run_id"]] = r["value"]
    lines = ["# Evaluation trend", "", "| model | task | setting | metric | " + " | ".join(run_ids) + " |",
             "|" + "---|" * (4 + len(run_ids))]
    for key in sorted(series):
        values = [_fmt(series[key].get(run)) for run in run_ids]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_trend(output: str) -> str:
    history = load_history(output)
    text = trend_markdown(history)
    fs, root = fsspec.core.url_to_fs(output)
    with fs.open(posixpath.join(root, "trend.md"), "w") as f:
        f.write(text)
    return text
