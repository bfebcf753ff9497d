"""A tensor-parallel replica (tp=2, gloo on the CPU) inside the Ray Data GPU stage: a job's output equals the
single-process engine's, and a rank SIGKILLed mid-job (as a crash or the OOM killer would) ends that replica
at once, Ray restarts it, and the job still writes every id exactly once. The same code path runs over NCCL
on GPUs (tests/gpu/test_tp_nccl.py and the device runs in BENCHMARKS.md)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import builder
from pipeline.job_config import JobConfig

pytestmark = pytest.mark.usefixtures("local_ray")


def jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_tp2_job_equals_engine_and_survives_a_killed_rank(tiny_mllama_dir, tmp_path: Path, watched,
                                                           engine_texts):
    rows = [{"id": f"t{i}", "image": jpeg(24 + 7 * i, 60 - 3 * i, seed=i)} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("image", pa.binary())])),
                   tmp_path / "in.parquet")
    marker = tmp_path / "rank_killed"
    config = JobConfig(model=str(tiny_mllama_dir), input=str(tmp_path / "in.parquet"), output=str(tmp_path / "out"),
                       max_new_tokens=6, max_model_len=2048, max_num_seqs=8, batch_size=4, batches_in_flight=2,
                       preprocess_actors=(1, 1), progress_interval_s=1.0, tp=2,
                       fault_injection={"tp_rank_kill_on_batch": 2, "marker": str(marker)})
    summary = watched(builder.run_job, config, timeout_s=300)
    assert marker.exists(), "the rank was not killed"
    out = pds.dataset(config.output, format="parquet").to_table().to_pylist()
    ids = [r["id"] for r in out]
    assert sorted(ids) == sorted(r["id"] for r in rows) and summary["rows_written"] == len(rows)

    want = engine_texts(config, rows)
    assert {r["id"]: r["text"] for r in out} == want
    assert all(r["error"] is None for r in out)
