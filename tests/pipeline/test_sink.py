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
    sink.prepare(cfg)
    assert sink.existing_ids() == set()
    sink.write(table(["a", "b"]))
    sink.write(table(["c"]))
    (tmp_path / "out" / f".tmp-part-x.{fmt}").write_text("half written")
    again = OutputSink(cfg.output, output_schema(), fmt)
    again.prepare(cfg)
    assert again.existing_ids() == {"a", "b", "c"}
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
    forced_sink = OutputSink(forced.output, output_schema())
    forced_sink.prepare(forced)
    assert forced_sink.existing_ids() == set()
    # Non-output knobs (throughput settings) do not change the fingerprint.
    assert JobConfig(model="m", input="in", output="x", batch_size=7).fingerprint() == cfg.fingerprint()


def test_refusal_names_the_changed_setting(tmp_path):
    cfg = JobConfig(model="m", input="in", output=str(tmp_path / "o"), max_new_tokens=64)
    OutputSink(cfg.output, output_schema()).prepare(cfg)
    other = JobConfig(model="m", input="in", output=cfg.output, max_new_tokens=32, temperature=0.7)
    with pytest.raises(ConfigMismatchError) as err:
        OutputSink(other.output, output_schema()).prepare(other)
    assert "--max-new-tokens: 64 -> 32" in str(err.value) and "--temperature: 0.0 -> 0.7" in str(err.value)
    assert "--prompt" not in str(err.value)  # unchanged settings are not listed


def test_output_format_change_is_refused_not_duplicated(tmp_path):
    out = str(tmp_path / "o")
    parquet = JobConfig(model="m", input="in", output=out)
    sink = OutputSink(out, output_schema(), "parquet")
    sink.prepare(parquet)
    sink.write(table(["a", "b"]))
    jsonl = JobConfig(model="m", input="in", output=out, output_format="jsonl")
    with pytest.raises(ConfigMismatchError, match="holds parquet output but --output-format is jsonl"):
        OutputSink(out, output_schema(), "jsonl").prepare(jsonl)
    same = OutputSink(out, output_schema(), "parquet")
    same.prepare(parquet)  # the same format resumes
    assert same.existing_ids() == {"a", "b"}
    forced = JobConfig(model="m", input="in", output=out, output_format="jsonl", overwrite=True)
    replaced = OutputSink(out, output_schema(), "jsonl")
    replaced.prepare(forced)
    assert replaced.existing_ids() == set()
    assert not list((tmp_path / "o").glob("part-*"))  # the parquet parts were replaced, not kept beside


def test_jsonl_keeps_non_ascii_text(tmp_path):
    cfg = JobConfig(model="m", input="in", output=str(tmp_path / "o"), output_format="jsonl")
    sink = OutputSink(cfg.output, output_schema(), "jsonl")
    sink.prepare(cfg)
    t = table(["ü-1"]).set_column(1, "text", pa.array(["Ein Hund läuft über die Straße 🐕"], pa.string()))
    path = sink.write(t)
    line = (tmp_path / "o" / path.rsplit("/", 1)[-1]).read_text(encoding="utf-8")
    assert "über die Straße 🐕" in line and '"ü-1"' in line and "\\u" not in line


def test_new_weights_at_the_same_model_path_are_refused(tmp_path):
    """The fingerprint names the model by its path: new safetensors there (a retrained model) must not resume
    into the old weights' output; records without a weights identity (older versions) still resume."""
    import json

    import torch
    from safetensors.torch import save_file

    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": torch.zeros(64, 64)}, model / "model.safetensors")
    cfg = JobConfig(model=str(model), input="in", output=str(tmp_path / "o"))
    OutputSink(cfg.output, output_schema()).prepare(cfg)
    OutputSink(cfg.output, output_schema()).write(table(["a"]))
    assert OutputSink(cfg.output, output_schema()).refusal(cfg) is None  # same weights: resume

    save_file({"w": torch.ones(64, 64)}, model / "model.safetensors")  # same names, shapes and size
    sink = OutputSink(cfg.output, output_schema())
    with pytest.raises(ConfigMismatchError, match="safetensors there have changed"):
        sink.prepare(cfg)
    job = tmp_path / "o" / "_vlmcap_job.json"
    record = json.loads(job.read_text())
    job.write_text(json.dumps({k: v for k, v in record.items() if k != "weights"}))  # an older version's record
    assert sink.refusal(cfg) is None

    forced = JobConfig(model=str(model), input="in", output=cfg.output, overwrite=True)
    job.write_text(json.dumps(record))
    OutputSink(cfg.output, output_schema()).prepare(forced)
    assert OutputSink(cfg.output, output_schema()).existing_ids() == set()  # the old weights' rows are gone
    assert OutputSink(cfg.output, output_schema()).refusal(cfg) is None  # and the new weights are recorded
