"""The run's HTML report, built from a small synthetic run directory (no Ray): two runs in the history, one
task with two models, per-row scores and prepared images. Checks: the page parses, the results table holds
this run's values and deltas, a PNG trend per model/task (and, without matplotlib, the values table
alone), both runs' values on the trend, JPEG thumbnails <= 128 px for the non-error rows only, escaped
text (a prediction holding `<script>` stays text), and the worst rows are the lowest-scored ones."""

from __future__ import annotations

import base64
import io
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.eval import report
from pipeline.eval.html_report import write_html_report
from pipeline.eval.runner import mark_finished
from pipeline.eval.sweep import Sweep

SCRIPT = "<script>alert('x')</script> & more"


class Page(HTMLParser):
    """Tags seen, every <img> src, and each table as rows of (cell text, [img srcs in the cell])."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.tables: list[list[list[tuple[str, list[str]]]]] = []
        self.cell: list | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ["", []]
        elif tag == "img":
            self.imgs.append(attrs["src"])
            if self.cell is not None:
                self.cell[1].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append((self.cell[0], self.cell[1]))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data

    def table_with(self, header: str) -> list[list[tuple[str, list[str]]]]:
        return next(t for t in self.tables if t and header in [c[0] for c in t[0]])


def image_bytes(seed: int, size=(300, 200)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def record(run_id: str, model: str, value: float, finished_at: float) -> dict:
    return {"run_id": run_id, "model": model, "task": "shapes", "setting": "default", "headline": "exact_match",
            "metrics": {"exact_match": {"value": value, "n": 5, "errors": 1, "ci_low": value - 0.1,
                                        "ci_high": value + 0.1}},
            "rows_per_s": 12.5, "code_version": "abc123", "finished_at": finished_at}


# (id, prediction, error, score) per model; the lowest scores overall are q1 of n (0.0, an error), q2 of m
# (0.0), q2 of n (0.1), then q4 of m (0.2).
SCORES = {
    "m": [("q0", "circle", None, 1.0), ("q1", SCRIPT, None, 0.5), ("q2", "red", None, 0.0),
          ("q3", "blue", None, 1.0), ("q4", "green", None, 0.2)],
    "n": [("q0", "circle", None, 0.9), ("q1", None, "decode_error: not a decodable image", 0.0),
          ("q2", "no", None, 0.1), ("q3", "yes", None, 1.0), ("q4", "maybe", None, 0.8)],
}


@pytest.fixture()
def run_dir(tmp_path: Path) -> str:
    out = str(tmp_path / "evals")
    report.write_results(out, "r1", [record("r1", "m", 0.70, 1.0), record("r1", "n", 0.40, 1.0)])
    report.write_results(out, "r2", [record("r2", "m", 0.55, 2.0), record("r2", "n", 0.45, 2.0)])
    prepared = tmp_path / "evals" / "_prepared" / "shapes-fp1"
    prepared.mkdir(parents=True)
    questions = {f"q{i}": f"What shape is {i}?" for i in range(5)}
    pq.write_table(pa.Table.from_pylist(
        [{"id": q, "image": image_bytes(i), "question": questions[q], "answers": ["circle", "round"]}
         for i, q in enumerate(questions)]), prepared / "data.parquet", row_group_size=2)
    for model, rows in SCORES.items():
        cell = tmp_path / "evals" / "r2" / model / "shapes" / "default"
        cell.mkdir(parents=True)
        (cell / "cell.json").write_text(json.dumps({"data_fingerprint": "fp1"}))
        pq.write_table(pa.Table.from_pylist(
            [{"id": i, "question": questions[i], "answers": ["circle", "round"], "text": t, "error": e, "score": s}
             for i, t, e, s in rows]), cell / "scores.parquet")
    return out


def test_report_tables_trend_thumbnails_and_escaping(run_dir):
    uri = write_html_report(run_dir, "r2", worst=4)
    assert uri == f"{run_dir}/r2/report.html"
    text = Path(uri).read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags  # the prediction's <script> stayed text...
    assert "link" not in page.tags and "http" not in " ".join(page.imgs)  # ...and nothing is fetched

    results = page.table_with("images/s")
    by_model = {r[0][0]: [c[0] for c in r] for r in results[1:]}
    # model, task, setting, metric, value, CI, n, errors, images/s, delta against r1
    assert by_model["m"] == ["m", "shapes", "default", "exact_match", "0.5500", "0.4500 – 0.6500", "5", "1",
                             "12.50", "-0.1500"]
    assert by_model["n"][4] == "0.4500" and by_model["n"][9] == "+0.0500"

    pngs = [s for s in page.imgs if s.startswith("data:image/png;base64,")]
    assert len(pngs) == 2  # one trend per model/task
    assert Image.open(io.BytesIO(base64.b64decode(pngs[0].split(",", 1)[1]))).format == "PNG"
    trend = page.table_with("setting (metric)")
    assert [c[0] for c in trend[0]] == ["setting (metric)", "r1", "r2"]
    assert [c[0] for c in trend[1]] == ["default (exact_match)", "0.7000", "0.5500"]  # both runs' points

    worst = page.table_with("prediction")
    head = [c[0] for c in worst[0]]
    got = [dict(zip(head, [c[0] for c in r], strict=True)) | {"img": r[0][1]} for r in worst[1:]]
    assert [(r["model"], r["id"], r["score"]) for r in got] == [
        ("m", "q2", "0.0000"), ("n", "q1", "0.0000"), ("n", "q2", "0.1000"), ("m", "q4", "0.2000")]
    assert got[1]["prediction"] == "decode_error: not a decodable image" and got[1]["img"] == []  # error row
    assert got[0]["question"] == "What shape is 2?" and got[0]["answers"] == "circleround"
    for r in (got[0], got[2], got[3]):
        (src,) = r["img"]
        assert src.startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert thumb.format == "JPEG" and thumb.size == (128, 85)  # 300x200 source, longest side 128

    # The <script> prediction is not among the worst 4; with all rows it is, as text. The error row still
    # has no thumbnail although m's row of the same id (q1, no error) now has one.
    page = Page(Path(write_html_report(run_dir, "r2", worst=10)).read_text(encoding="utf-8"))
    assert "script" not in page.tags
    table = page.table_with("prediction")
    assert SCRIPT in [c[0] for r in table[1:] for c in r]
    imgs = {(r[1][0], r[3][0]): r[0][1] for r in table[1:]}  # (model, id) -> the image cell's srcs
    assert len(imgs) == 10 and imgs[("n", "q1")] == [] and len(imgs[("m", "q1")]) == 1


def test_report_without_matplotlib_keeps_the_values_table(run_dir, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of a None entry raises ImportError
    page = Page(Path(write_html_report(run_dir, "r2")).read_text(encoding="utf-8"))
    assert not [s for s in page.imgs if s.startswith("data:image/png")]
    assert [c[0] for c in page.table_with("setting (metric)")[1]] == ["default (exact_match)", "0.7000", "0.5500"]
    assert any(s.startswith("data:image/jpeg;base64,") for s in page.imgs)


def test_mark_finished_writes_the_report_first(run_dir):
    mark_finished(Sweep(output=run_dir, models={}, tasks=()), "r2", log=lambda _: None)
    assert (Path(run_dir) / "r2" / "report.html").exists()
    assert json.loads((Path(run_dir) / "r2" / "run.json").read_text())["finished"] is True
    with pytest.raises(ValueError, match="no results.json"):
        mark_finished(Sweep(output=run_dir, models={}, tasks=()), "r3", log=lambda _: None)
    assert not (Path(run_dir) / "r3" / "run.json").exists()  # no report: the run stays unfinished
