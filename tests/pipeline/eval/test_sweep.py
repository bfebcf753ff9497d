"""A sweep end to end on a local Ray (CPU): 2 models (tiny OneVision, tiny Llama-3.2-Vision) x 2 tasks x 2
settings, 3 rows per task, run by `jobs/eval.py` in a child process that is SIGKILLed mid-sweep (five cells
finished, the sixth holding one committed part file: the child stops right after that commit and waits to
be killed, so the kill always lands there), then re-run with the same command in this process. The re-run
skips the finished cells (files untouched), generates only the sixth cell's missing rows and the last two
cells, and ends with every (cell, id) exactly once; every prediction equals the engine's own answer for
that row (an uninterrupted computation) and every score and aggregate equals the scorer's on those
answers. The run's results.parquet/md, history, trend and HTML report are checked (the report with an HTML
parser: no external assets, a results row per cell, a trend plot per model/task, thumbnails of worst rows).
Random weights, so accuracy is not checked. Also: deltas and the regression exit rule, on synthetic results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from jobs.eval import main as eval_main
from pipeline.eval import report


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # "local": a cluster of its own even when a `ray start` one runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def watched(fn, *args, timeout_s: float = 300):
    """A hang fails the test instead of blocking the suite."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=fn(*args)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the sweep did not finish within {timeout_s}s"
    return result["value"]


def cell_rows(cell: Path) -> list[str]:
    ids = []
    for part in sorted(cell.glob("part-*.parquet")):
        ids += pq.read_table(part, columns=["id"]).column("id").to_pylist()
    return ids


# The sweep process, SIGKILLed by the test: it holds still right after its first commit into STOP_CELL (that
# part file is complete, the cell is not) until the kill comes. Nothing else in it is changed.
KILLED_SWEEP = """
import sys, time
from pipeline import sink
marker, stop_cell = sys.argv[1], sys.argv[2]
commit = sink.OutputSink.write
def write(self, *args, **kwargs):
    path = commit(self, *args, **kwargs)
    if self.uri.endswith(stop_cell):
        with open(marker + ".tmp", "w") as f:
            f.write(path)
        import os; os.rename(marker + ".tmp", marker)
        time.sleep(600)
    return path
sink.OutputSink.write = write
from jobs.eval import main
sys.exit(main(sys.argv[3:]))
"""
MODELS, TASKS, SETTINGS = ("ov", "mllama"), ("easy_vqa", "shapes"), ("default", "terse")
CELLS = [f"{m}/{t}/{s}" for m in MODELS for t in TASKS for s in SETTINGS]  # the order a sweep runs them
STOP_CELL = CELLS[5]


class Page(HTMLParser):
    """Every tag, img src, link/script with a src or href, h2/h3 text, and each table's rows of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.imgs, self.external, self.headings, self.tables = [], [], [], [], []
        self.cell = self.heading = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs.get("src") or "")
        if tag in ("link", "script", "iframe") or (tag != "img" and "src" in attrs):
            self.external.append((tag, attrs))
        if tag in ("h2", "h3"):
            self.heading = ""
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self.heading is not None:
            self.headings.append(self.heading)
            self.heading = None
        elif tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.heading is not None:
            self.heading += data


def snapshot(cell: Path, pattern: str = "*") -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cell.glob(pattern)}


def test_sweep_killed_mid_sweep_resumes_to_the_uninterrupted_result(tiny_ov_dir, tiny_mllama_dir, tmp_path,
                                                                     engine_texts):
    from pipeline.eval.easy_vqa import convert, package_data_dir
    from pipeline.eval.prepare import prepare_task
    from pipeline.eval.runner import job_config
    from pipeline.eval.score import score_table
    from pipeline.eval.sweep import load_sweep

    # The real easy-VQA test split (the easy-vqa package's data), converted as a user would: end to end.
    assert convert(package_data_dir(), "test", tmp_path / "easy.parquet", limit=3) == 3
    rows = pq.read_table(tmp_path / "easy.parquet").to_pylist()
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(json.dumps({  # JSON is YAML
        "output": str(tmp_path / "evals"),
        "models": {"ov": str(tiny_ov_dir), "mllama": str(tiny_mllama_dir)},
        "tasks": [{"easy_vqa": {"input": str(tmp_path / "easy.parquet"), "max_new_tokens": 3}},
                  {"name": "shapes", "input": str(tmp_path / "easy.parquet"), "metrics": ["anls", "exact_match"],
                   "answers_column": "answer", "prompt": "Question: {question}", "max_new_tokens": 3}],
        "settings": [{"name": "default"}, {"name": "terse", "prompt": "{question} One word.", "max_new_tokens": 2}],
        # one part file per output batch (a kill keeps every committed row); CPU stage pinned to one actor
        "job": {"max_model_len": 2048, "max_num_seqs": 8, "rows_per_file": 1, "preprocess_actors": [1, 1]},
    }))
    args = ["--sweep", str(sweep_file), "--run-id", "r1"]
    run = tmp_path / "evals" / "r1"
    cells = {name: run / name for name in CELLS}

    # 1. The sweep in its own process (on this test's Ray cluster), SIGKILLed mid-sweep.
    marker = tmp_path / "committed"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, str(marker), STOP_CELL, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no handler runs, nothing is flushed
        log = proc.communicate(timeout=60)[0]
    assert marker.exists(), f"no commit into {STOP_CELL}:\n{log[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    finished = [c for c in CELLS if (cells[c] / "cell.json").exists()]
    assert finished == CELLS[:5], log[-3000:]
    kept = cell_rows(cells[STOP_CELL])
    assert 1 <= len(kept) < len(rows), kept  # killed inside the cell: some rows committed, not all
    before = {c: snapshot(cells[c]) for c in finished}
    committed = snapshot(cells[STOP_CELL], "part-*")

    # 2. The same command again: finished cells skipped, committed rows kept, the rest generated.
    assert watched(eval_main, args) == 0
    for c in finished:
        assert snapshot(cells[c]) == before[c], c  # not one file of a finished cell rewritten
    assert committed.items() <= snapshot(cells[STOP_CELL], "part-*").items()  # committed parts untouched
    resumed = json.loads((cells[STOP_CELL] / "cell.json").read_text())["generation"]
    assert (resumed["rows_skipped_resume"], resumed["rows_written"]) == (len(kept), len(rows) - len(kept))
    for c in CELLS[6:]:
        assert json.loads((cells[c] / "cell.json").read_text())["generation"]["rows_written"] == len(rows)

    # 3. Every (cell, id) once, and the result an uninterrupted computation gives: the engine's answer for each
    # row, scored by the same scorer.
    sweep = load_sweep(sweep_file)
    for m in MODELS:
        for task in sweep.tasks:
            prepared = prepare_task(task, {s.name: s.apply(task) for s in sweep.settings}, sweep.output)
            inputs = pq.read_table(Path(prepared.uri) / "data.parquet").to_pylist()
            for setting in sweep.settings:
                name = f"{m}/{task.name}/{setting.name}"
                assert sorted(cell_rows(cells[name])) == sorted(r["id"] for r in rows), name
                config = job_config(sweep, m, task, setting, prepared, str(cells[name]))
                want = engine_texts(config, inputs)
                scores = pq.read_table(cells[name] / "scores.parquet")
                assert scores.column("text").to_pylist() == [want[i] for i in scores.column("id").to_pylist()], name
                clean = scores.drop_columns([c for c in scores.column_names if c.startswith("score")])
                clean_scores, clean_metrics = score_table(clean, setting.apply(task))
                assert scores.equals(clean_scores), name
                assert json.loads((cells[name] / "cell.json").read_text())["metrics"] == clean_metrics, name

    results = pq.read_table(run / "results.parquet").to_pylist()
    assert {(r["model"], r["task"], r["setting"]) for r in results} == {tuple(c.split("/")) for c in CELLS}
    assert {r["metric"] for r in results if r["task"] == "shapes"} == {"anls", "exact_match"}
    assert "| mllama | shapes | terse | anls |" in (run / "results.md").read_text()
    assert json.loads((tmp_path / "evals" / "history" / "r1.json").read_text())["run_id"] == "r1"
    assert "r1" in (tmp_path / "evals" / "trend.md").read_text()
    assert json.loads((run / "run.json").read_text())["finished"] is True

    # 4. The HTML report, rendered once, read with an HTML parser.
    page = Page((run / "report.html").read_text(encoding="utf-8"))
    assert page.external == [] and page.imgs and all(src.startswith("data:image/") for src in page.imgs)
    assert "script" not in page.tags
    assert page.headings[:1] == ["Results"] and "Trend over runs" in page.headings
    table = next(t for t in page.tables if t and "metric" in t[0])
    head = table[0]
    body = [dict(zip(head, r, strict=True)) for r in table[1:]]
    assert {(r["model"], r["task"], r["setting"]) for r in body} == {tuple(c.split("/")) for c in CELLS}
    assert len(body) == len(results)  # one row per cell and metric
    for t in TASKS:
        assert t in page.headings  # the task's worst rows
    for m in MODELS:
        for t in TASKS:
            assert any(h.startswith(m) and t in h for h in page.headings), (m, t, page.headings)  # a trend each
    assert sum(src.startswith("data:image/png") for src in page.imgs) == len(MODELS) * len(TASKS)  # trend plots
    assert any(src.startswith("data:image/jpeg") for src in page.imgs)  # worst rows' thumbnails


def result(run_id: str, value: float, model: str = "m") -> dict:
    return {"run_id": run_id, "model": model, "task": "t", "setting": "default", "headline": "vqa_accuracy",
            "metrics": {"vqa_accuracy": {"value": value, "n": 10, "errors": 0, "ci_low": 0.0, "ci_high": 1.0}},
            "rows_per_s": 1.0, "code_version": "x", "finished_at": 1.0}


def test_compare_and_regression_rules(tmp_path):
    out = str(tmp_path)
    report.write_results(out, "a", [result("a", 0.60), result("a", 0.50, model="n")])
    rows = report.result_rows([result("b", 0.55), result("b", 0.51, model="n")])
    history = report.load_history(out)
    deltas = report.compare(rows, report.baseline(history, "b", "previous"))
    assert deltas[("m", "t", "default", "vqa_accuracy")] == pytest.approx(-0.05)
    problems = report.regressions(rows, deltas, max_regression=2.0, fail_below=None)
    assert len(problems) == 1 and problems[0].startswith("m/t/default/vqa_accuracy fell 5.00 points")
    assert report.regressions(rows, deltas, max_regression=6.0, fail_below=None) == []
    assert len(report.regressions(rows, deltas, max_regression=None, fail_below=0.52)) == 1
    with pytest.raises(ValueError, match="no such run"):
        report.baseline(history, "b", "zzz")
