"""Issue 13, done-when 1-2: the trained demo model answers, measured through `jobs/caption.main` on CPU.

One caption job (local Ray, the bundled `demo/model`, greedy, the eval tasks' short-answer prompt as a
prompt column) over 500 held-out questions (`demo.heldout`: 100 scenes from a seed stream the trainer never
samples, 5 questions each) and the first 200 questions of the easy-VQA test split (the `easy-vqa` test extra's
data, converted by `pipeline.eval.easy_vqa`). Exact match is asserted a few points below what the shipped
weights measured (demo/model/README.md: held-out 100% of 500; these 200 easy-VQA questions 100%, the first
2,000 through the eval sweep 100%), far above easy-VQA's majority answer ("no", 37%). One job for both
sets: one Ray start-up and model load, not two.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from demo.examples import qa_prompt
from demo.heldout import heldout_table, score
from jobs.caption import main

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT_FLOOR = 0.97  # measured 1.000 (500 questions, this job, 2-core CPU)
EASY_VQA_FLOOR = 0.96  # measured 1.000 on these 200; majority answer ("no") 0.37


def easy_vqa_rows(tmp_path: Path, n: int) -> pa.Table:
    easy = pytest.importorskip("pipeline.eval.easy_vqa")
    pytest.importorskip("easy_vqa")
    path = tmp_path / "easy.parquet"
    easy.convert(easy.package_data_dir(), "test", path, limit=n)
    t = pq.read_table(path)
    return pa.table({"id": t["id"], "image": t["image"],
                     "prompt": [qa_prompt(q) for q in t["question"].to_pylist()],
                     "answer": t["answer"], "kind": ["easy_vqa"] * t.num_rows, "shapes": [None] * t.num_rows})


def test_trained_demo_model_answers(tmp_path):
    held = heldout_table(scenes=100)
    easy = easy_vqa_rows(tmp_path, 200)
    pq.write_table(pa.concat_tables([held, easy.cast(held.schema)]), tmp_path / "rows.parquet")
    out = tmp_path / "out"
    try:
        rc = main(["--model", str(ROOT / "demo" / "model"), "--input", str(tmp_path / "rows.parquet"),
                   "--output", str(out), "--prompt-column", "prompt", "--keep-columns", "answer", "kind", "shapes",
                   "--max-new-tokens", "8"])
    finally:
        ray.shutdown()
    assert rc == 0
    result = score(out)
    assert result["n"] == 700  # every row written (error rows would score as wrong, not vanish)
    kinds = result["by_kind"]
    easy_acc = kinds.pop("easy_vqa")
    held_acc = sum(kinds[k] * n for k, n in Counter(held["kind"].to_pylist()).items()) / held.num_rows
    print(f"held-out exact match {held_acc:.3f} (500), easy-VQA {easy_acc:.3f} (200), by kind {kinds}, "
          f"by shapes in the scene {result['by_shapes']}")
    assert sorted(result["by_shapes"]) == [1, 2, 3, 4, 5]
    assert held_acc >= HELD_OUT_FLOOR, result
    assert easy_acc >= EASY_VQA_FLOOR, result
