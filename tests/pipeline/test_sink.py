"""pipeline/sink.py: atomic part files, resume ids, fingerprint refusal, overwrite, JSONL."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.job_config import JobConfig
from pipeline.schema import output_schema
from pipeline.sink import ConfigMismatchError, OutputSink


def table(ids):
    n = len(ids)
    return pa.table({"id": ids, "text": ["t"] * n, "finish_reason": ["stop"] * n, "error": [None] * n,
                     "num_prompt_tokens": pa.array([3] * n, pa.int32()),
                     "num_generated_tokens": pa.array([2] * n, pa.int32()), "model": ["m"] * n},
                    schema=output_schema())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_resume_returns_written_ids(tmp_path, fmt):
    cfg = JobConfig(model="m", input="in", output=str(tmp_path / "out"), output_format=fmt)
    sink = OutputSink(cfg.output, output_schema(), fmt)
    assert sink.prepare(cfg) == set()
    sink.write(table(["a", "b"]))
    sink.write(table(["c"]))
    (tmp_path / "out" / f".tmp-part-x.{fmt}").write_text("half written")
    again = OutputSink(cfg.output, output_schema(), fmt)
    assert again.prepare(cfg) == {"a", "b", "c"}
    assert not list((tmp_path / "out").glob(".tmp-*"))  # crash debris removed


def test_different_config_refused_unless_overwrite(tmp_path):
    cfg = JobConfig(model="m", input="in", output=str(tmp_path / "o"))
    sink = OutputSink(cfg.output, output_schema())
    sink.prepare(cfg)
    sink.write(table(["a"]))
    other = JobConfig(model="m", input="in", output=cfg.output, prompt="something else")
    with pytest.raises(ConfigMismatchError, match="different configuration"):
        OutputSink(other.output, output_schema()).prepare(other)
    forced = JobConfig(model="m", input="in", output=cfg.output, prompt="something else", overwrite=True)
    assert OutputSink(forced.output, output_schema()).prepare(forced) == set()
    # Non-output knobs (throughput settings) do not change the fingerprint.
    assert JobConfig(model="m", input="in", output="x", batch_size=7).fingerprint() == cfg.fingerprint()
