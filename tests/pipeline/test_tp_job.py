"""A tensor-parallel replica (tp=2, gloo on the CPU) inside the Ray Data GPU stage: a job's output equals the
single-process engine's, and a rank SIGKILLed mid-job (as a crash or the OOM killer would) ends that replica
at once, Ray restarts it, and the job still writes every id exactly once. The same code path runs over NCCL
on GPUs (tests/gpu/test_tp_nccl.py and the device runs in BENCHMARKS.md)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from ops.sampling import SamplingParams
from pipeline import builder
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def run_watched(config: JobConfig, timeout_s: float = 300) -> dict:
    """A hang fails the test instead of blocking the suite."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=builder.run_job(config)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the job did not finish within {timeout_s}s (hang)"
    assert "value" in result, "the job raised (see its output above)"
    return result["value"]


def test_tp2_job_equals_engine_and_survives_a_killed_rank(tiny_mllama_dir, tmp_path: Path):
    rows = [{"id": f"t{i}", "image": jpeg(24 + 7 * i, 60 - 3 * i, seed=i)} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("image", pa.binary())])),
                   tmp_path / "in.parquet")
    marker = tmp_path / "rank_killed"
    config = JobConfig(model=str(tiny_mllama_dir), input=str(tmp_path / "in.parquet"), output=str(tmp_path / "out"),
                       max_new_tokens=6, max_model_len=2048, max_num_seqs=8, batch_size=4, batches_in_flight=2,
                       preprocess_actors=(1, 1), progress_interval_s=1.0, tp=2,
                       fault_injection={"tp_rank_kill_on_batch": 2, "marker": str(marker)})
    summary = run_watched(config)
    assert marker.exists(), "the rank was not killed"
    out = pds.dataset(config.output, format="parquet").to_table().to_pylist()
    ids = [r["id"] for r in out]
    assert sorted(ids) == sorted(r["id"] for r in rows) and summary["rows_written"] == len(rows)

    codec = codec_for(config.model, config)
    engine = build_engine(config.model, EngineConfig(max_num_seqs=8, max_model_len=2048, dtype="float32",
                                                     cuda_graphs=False), device="cpu")
    requests = []
    for row in rows:
        ids_, blob = codec.prepare(row)
        requests.append(Request(row["id"], ids_, codec.unpack({"media": [blob]}, 0),
                                SamplingParams(max_new_tokens=6)))
    want = {c.request_id: c.text for c in engine.generate(requests)}
    assert {r["id"]: r["text"] for r in out} == want
    assert all(r["error"] is None for r in out)
