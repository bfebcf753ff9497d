"""A self-contained HTML report of one evaluation run: `<output>/<run_id>/report.html`.

Contract: `write_html_report(output, run_id)` reads what the run already wrote (`<run>/results.json`, the
history `<output>/history/*.json`, each cell's `cell.json` and `scores.parquet`, and the task's prepared
`data.parquet` for the images) and writes one HTML file with no external assets:
- the results table (model x task x setting x metric: value, 95% CI, n, errors, images/s, delta against the
  previous run in the history);
- per model/task, the headline metric of each setting over the past runs (at most `MAX_RUNS`): a matplotlib
  PNG (Agg, no pyplot state) as a `data:` URI when matplotlib imports, and always a table of the values;
- per task, the `worst` lowest-scored rows over all its cells (ties by model, setting, id) with a JPEG
  thumbnail (`data:` URI, longest side <= 128 px), question, reference answers and prediction or error.
Every piece of text is escaped with `html.escape`. Driver only; imports no ray.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Collection

import fsspec
import pyarrow.parquet as pq

from pipeline.eval import report
from pipeline.eval.score import SCORES_FILE
from pipeline.eval.sweep import CELL_FILE, read_json
from pipeline.thumbnails import media_cell_bytes, parquet_cells, thumbnail_uri

REPORT_FILE = "report.html"
MAX_RUNS = 30  # trend window: more points would make the plots unreadable, the history keeps them all
STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere;max-width:40em}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.headline td{font-weight:600}
.err{color:#b00020}.trend{display:inline-block;margin:0 24px 16px 0;vertical-align:top}
img.thumb{max-width:128px;max-height:128px}.muted{color:#777}"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else esc(value)


def _table(headers: list[str], rows: list[list[str]], numeric: Collection[int] = (),
           row_classes: list[str] | None = None) -> str:
    """`rows` hold cell HTML that the caller already escaped (a cell may be an <img>); headers are escaped
    here; columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        tds = "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def results_section(rows: list[dict], deltas: dict) -> str:
    cells = []
    for r in rows:
        d = deltas.get(tuple(r[k] for k in report.KEY))
        cells.append([esc(r["model"]), esc(r["task"]), esc(r["setting"]), esc(r["metric"]), _num(r["value"]),
                      f"{_num(r['ci_low'])} – {_num(r['ci_high'])}", _num(r["n"]), _num(r["errors"]),
                      _num(r["rows_per_s"], 2), "-" if d is None else f"{d:+.4f}"])
    headers = ["model", "task", "setting", "metric", "value", "95% CI", "n", "errors", "images/s", "Δ previous"]
    return "<h2>Results</h2>" + _table(headers, cells, set(range(4, 10)),
                                       ["headline" if r["headline"] else "" for r in rows])


def trend_series(history: list[dict]) -> tuple[list[str], dict[tuple[str, str], dict[str, dict[str, float]]]]:
    """(run ids, oldest first; {(model, task): {"setting (metric)": {run_id: value}}}) of headline metrics."""
    history = history[-MAX_RUNS:]
    series: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for h in history:
        for r in h["rows"]:
            if r["headline"]:
                label = f"{r['setting']} ({r['metric']})"
                series.setdefault((r["model"], r["task"]), {}).setdefault(label, {})[h["run_id"]] = r["value"]
    return [h["run_id"] for h in history], series


def trend_png(title: str, run_ids: list[str], lines: dict[str, dict[str, float]]) -> str | None:
    """A PNG `data:` URI, or None without matplotlib (the values table below the plot still shows it all)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(5.2, 2.8), dpi=100)
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no global backend switch in the caller
    ax = fig.add_subplot()
    for label, values in sorted(lines.items()):
        xs = [i for i, run in enumerate(run_ids) if run in values]
        ax.plot(xs, [values[run_ids[i]] for i in xs], marker="o", label=label)
    ax.set_xticks(range(len(run_ids)), run_ids, rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(run_ids) - 0.5)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def trend_section(history: list[dict]) -> str:
    run_ids, series = trend_series(history)
    parts = ["<h2>Trend over runs</h2>"]
    for (model, task), lines in sorted(series.items()):
        title = f"{model} / {task}"
        png = trend_png(title, run_ids, lines)
        img = f'<img src="{esc(png)}" alt="{esc(title)} trend"><br>' if png else ""
        values_rows = [[esc(label), *(_num(values.get(run)) for run in run_ids)]
                       for label, values in sorted(lines.items())]
        table = _table(["setting (metric)", *run_ids], values_rows, set(range(1, len(run_ids) + 1)))
        parts.append(f'<div class="trend"><h3>{esc(title)}</h3>{img}{table}</div>')
    return "".join(parts)


def worst_rows(output: str, run_id: str, rows: list[dict], worst: int) -> dict[str, list[dict]]:
    """task -> its `worst` lowest-scored rows over all of its cells, each with model, setting and data_fp."""
    by_task: dict[str, list[dict]] = {}
    for model, task, setting in sorted({(r["model"], r["task"], r["setting"]) for r in rows}):
        cell = f"{output}/{run_id}/{model}/{task}/{setting}"
        record = read_json(f"{cell}/{CELL_FILE}") or {}
        fs, path = fsspec.core.url_to_fs(f"{cell}/{SCORES_FILE}")
        if not fs.exists(path):
            continue
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        keep = [c for c in ("id", "question", "answers", "text", "error", "score") if c in table.column_names]
        for r in table.select(keep).to_pylist():
            if r.get("score") is not None:
                by_task.setdefault(task, []).append(
                    {**r, "model": model, "setting": setting, "data_fp": record.get("data_fingerprint")})
    return {task: sorted(rs, key=lambda r: (r["score"], r["model"], r["setting"], r["id"]))[:worst]
            for task, rs in by_task.items()}


def _thumbnails(output: str, task: str, rows: list[dict]) -> dict[str, str]:
    """id -> thumbnail URI, only for rows without an error (see pipeline/thumbnails.py: never decode again
    in the driver what failed in the isolated decoder)."""
    out: dict[str, str] = {}
    for data_fp in {r["data_fp"] for r in rows if r["data_fp"]}:
        ids = {r["id"] for r in rows if r["data_fp"] == data_fp and r.get("error") is None}
        fs, path = fsspec.core.url_to_fs(f"{output}/_prepared/{task}-{data_fp}/data.parquet")
        if not ids or not fs.exists(path):
            continue
        for rid, cell in parquet_cells(fs, [path], "id", "image", ids).items():
            uri = thumbnail_uri(media_cell_bytes(cell))
            if uri:
                out[rid] = uri
    return out


def worst_section(output: str, run_id: str, rows: list[dict], worst: int) -> str:
    parts = [f"<h2>Worst rows per task (lowest {worst} scores)</h2>"]
    for task, picked in sorted(worst_rows(output, run_id, rows, worst).items()):
        thumbs = _thumbnails(output, task, picked)
        cells = []
        for r in picked:
            # By id, so a thumbnail made for another cell's row of the same id must not show on an error row.
            thumb = thumbs.get(r["id"]) if r.get("error") is None else None
            img = f'<img class="thumb" src="{esc(thumb)}" alt="{esc(r["id"])}">' if thumb else \
                '<span class="muted">no image</span>'
            pred = f'<span class="err">{esc(r["error"])}</span>' if r.get("error") else esc(r.get("text"))
            answers = "<br>".join(esc(a) for a in (r.get("answers") or []))
            cells.append([img, esc(r["model"]), esc(r["setting"]), esc(r["id"]), esc(r.get("question")), answers,
                          pred, _num(r["score"])])
        parts.append(f"<h3>{esc(task)}</h3>" + _table(
            ["image", "model", "setting", "id", "question", "answers", "prediction", "score"], cells, {7}))
    return "".join(parts)


def render(output: str, run_id: str, worst: int = 8) -> str:
    rows = read_json(f"{output}/{run_id}/results.json")
    if rows is None:
        raise ValueError(f"run {run_id}: no results.json under {output} (write the results first)")
    history = report.load_history(output)
    base = report.baseline(history, run_id, "previous")
    deltas = report.compare(rows, base) if base else {}
    versions = sorted({str(r.get("code_version")) for r in rows})
    meta = (f"<p class=\"muted\">output {esc(output)} · code {esc(', '.join(versions))} · compared to "
            f"{esc(base['run_id']) if base else 'no earlier run'} · written "
            f"{esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>")
    body = (f"<h1>Evaluation run {esc(run_id)}</h1>{meta}{results_section(rows, deltas)}"
            f"{trend_section(history)}{worst_section(output, run_id, rows, worst)}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Evaluation run {esc(run_id)}'
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>\n")


def write_html_report(output: str, run_id: str, worst: int = 8) -> str:
    """Render and write `<output>/<run_id>/report.html`; returns its URI."""
    text = render(output, run_id, worst)
    uri = f"{output}/{run_id}/{REPORT_FILE}"
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return uri
