"""Resume end to end on a local Ray (CPU, tiny Mllama): an output holding a part written by the previous
version (no unit), a finished input file and a partly written one resumes to every id exactly once, records
every file as finished, and a re-run reads nothing and writes nothing."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import builder
from pipeline.job_config import JobConfig
from pipeline.resume import unit_key
from pipeline.schema import output_schema
from pipeline.sink import OutputSink

pytestmark = pytest.mark.usefixtures("local_ray")


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def rows(ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({"id": ids, "text": ["old"] * n, "finish_reason": ["stop"] * n, "error": [None] * n,
                     "num_prompt_tokens": pa.array([1] * n, pa.int32()),
                     "num_generated_tokens": pa.array([1] * n, pa.int32()), "model": ["m"] * n}, schema=output_schema())


def test_old_finished_and_partial_outputs_resume_exactly_once(tiny_mllama_dir, tmp_path, watched):
    (tmp_path / "in").mkdir()
    ids = [f"r{i:02d}" for i in range(12)]
    for k in range(3):
        part = ids[4 * k: 4 * k + 4]
        pq.write_table(pa.table({"id": part, "image": [jpeg(int(i[1:])) for i in part]}),
                       tmp_path / "in" / f"s{k}.parquet")
    config = JobConfig(model=str(tiny_mllama_dir), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                       max_new_tokens=4, max_model_len=512, max_num_seqs=8, batch_size=4, preprocess_actors=(1, 1),
                       progress_interval_s=1.0)
    sink = OutputSink(config.output, output_schema())
    sink.prepare(config)
    sink.write(rows(["r00", "r09"]))  # as the previous version wrote parts: no unit in the name, no record
    sink.write(rows(["r04", "r05", "r06", "r07"]), unit=unit_key("s1.parquet"))
    sink.mark_done(unit_key("s1.parquet"), "s1.parquet", 4)  # s1 finished
    sink.write(rows(["r08"]), unit=unit_key("s2.parquet"))  # s2 partly written

    summary = watched(builder.run_job, config)
    out = pds.dataset(config.output, format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in out) == ids  # every id exactly once
    assert summary["rows_written"] == 12 - 7 and summary["rows_skipped_resume"] == 7
    new = {r["id"] for r in out if r["text"] != "old"}
    assert new == {"r01", "r02", "r03", "r10", "r11"}
    assert sink.done_units() == {unit_key(f"s{k}.parquet"): 4 for k in range(3)}

    parts = sorted(sink.parts())
    again = watched(builder.run_job, config)
    assert again["rows_written"] == 0 and again["rows_skipped_resume"] == 12  # 3 records of 4 rows
    assert sorted(sink.parts()) == parts
