"""One sweep end to end on a local Ray (CPU): 2 models (tiny OneVision, tiny Llama-3.2-Vision) x 1 task
x 1 setting, 4 rows each, through `jobs/eval.py`'s `main`. Random weights, so accuracy is not checked;
the files, the scores and the resume are: a cell that "crashed" (its cell.json, scores and one committed
part file removed) resumes and regenerates only the missing rows, the finished cell is skipped, and the
re-run's scores equal the first run's. Also: deltas and the regression exit rule, on synthetic results."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from jobs.eval import main as eval_main
from pipeline.eval import report


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


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


def test_sweep_two_cells_scores_and_resume(tiny_ov_dir, tiny_mllama_dir, tmp_path):
    rows = [{"id": f"q{i}", "image": png(i), "question": f"Is shape {i} red?", "answer": ["yes", "no"][i % 2]}
            for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "easy.parquet")
    sweep = {
        "output": str(tmp_path / "evals"),
        "models": {"ov": str(tiny_ov_dir), "mllama": str(tiny_mllama_dir)},
        "tasks": [{"easy_vqa": {"input": str(tmp_path / "easy.parquet"), "max_new_tokens": 3}}],
        "job": {"max_model_len": 2048, "max_num_seqs": 8, "batch_size": 2,
                "preprocess_actors": [1, 1], "progress_interval_s": 1.0},
    }
    (tmp_path / "sweep.yaml").write_text(json.dumps(sweep))  # JSON is YAML
    args = ["--sweep", str(tmp_path / "sweep.yaml"), "--run-id", "r1"]
    assert watched(eval_main, args) == 0

    run = tmp_path / "evals" / "r1"
    cells = {m: run / m / "easy_vqa" / "default" for m in ("ov", "mllama")}
    first = {}
    for model, cell in cells.items():
        assert sorted(cell_rows(cell)) == ["q0", "q1", "q2", "q3"]
        record = json.loads((cell / "cell.json").read_text())
        agg = record["metrics"]["exact_match"]
        assert agg["n"] == 4 and agg["errors"] == 0 and 0 <= agg["ci_low"] <= agg["value"] <= agg["ci_high"] <= 1
        scores = pq.read_table(cell / "scores.parquet").to_pylist()
        assert [r["id"] for r in scores] == ["q0", "q1", "q2", "q3"]
        for r, src in zip(scores, rows, strict=True):
            assert r["answers"] == [src["answer"]] and r["question"] == src["question"]
            # the score is exact match of the kept prediction against the kept answer
            want = float(r["text"].strip().lower().rstrip(".").strip() == src["answer"])
            assert r["score"] == want and r["error"] is None
        assert agg["value"] == sum(r["score"] for r in scores) / 4
        first[model] = scores
    results = pq.read_table(run / "results.parquet").to_pylist()
    assert {(r["model"], r["metric"]) for r in results} == {("ov", "exact_match"), ("mllama", "exact_match")}
    assert "| ov | easy_vqa | default | exact_match |" in (run / "results.md").read_text()
    assert "r1" in (tmp_path / "evals" / "trend.md").read_text()
    assert json.loads((tmp_path / "evals" / "history" / "r1.json").read_text())["run_id"] == "r1"

    # "Crash" the mllama cell: no finish marker, no scores, and only its first 2 rows committed (the state a
    # kill between two part-file commits leaves).
    crashed = cells["mllama"]
    table = pa.concat_tables([pq.read_table(p) for p in crashed.glob("part-*.parquet")]).sort_by("id")
    for p in [*crashed.glob("part-*.parquet"), crashed / "cell.json", crashed / "scores.parquet"]:
        p.unlink()
    pq.write_table(table.slice(0, 2), crashed / "part-000000000000-crashed0.parquet")
    lost = table.slice(2).column("id").to_pylist()
    ov_parts = sorted(p.name for p in cells["ov"].glob("part-*.parquet"))
    ov_record = (cells["ov"] / "cell.json").read_text()

    assert watched(eval_main, args) == 0
    assert sorted(p.name for p in cells["ov"].glob("part-*.parquet")) == ov_parts  # finished: skipped
    assert (cells["ov"] / "cell.json").read_text() == ov_record
    assert sorted(cell_rows(crashed)) == ["q0", "q1", "q2", "q3"]  # every id exactly once
    resumed = json.loads((crashed / "cell.json").read_text())
    assert resumed["generation"]["rows_written"] == len(lost)  # only the lost rows were generated again
    assert resumed["generation"]["rows_skipped_resume"] == 4 - len(lost)
    assert pq.read_table(crashed / "scores.parquet").to_pylist() == first["mllama"]  # greedy: same texts, scores


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
