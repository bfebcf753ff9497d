"""pipeline/resume.py + pipeline/part_writer.py without Ray: resume state per input file (unit).

- a fresh output reads every file; finished files get a completion record and are not read again, partly
  written ones are read minus their own ids; only those ids are loaded;
- a crash between a unit's last part and its record: the next plan writes the record and skips the file;
- retried rows of a finished unit and repeated ids are dropped; `finish()` records what the stream read;
- output written by the old code (parts without units) still resumes: their ids are skipped;
- an input moved elsewhere (units not in the input) is still exact: their ids are read;
- `--overwrite` removes the records; a finished output is recognised from listings alone (no id read).
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job_config import JobConfig
from pipeline.part_writer import PartWriter
from pipeline.preflight import rows_already_done
from pipeline.progress import Progress
from pipeline.resume import UNIT_COLUMN, input_units, plan_resume, tag_units, unit_key
from pipeline.schema import output_schema
from pipeline.sink import OutputSink


def shards(root, sizes: list[int]) -> str:
    root.mkdir()
    start = 0
    for k, n in enumerate(sizes):
        ids = [f"r{i:04d}" for i in range(start, start + n)]
        pq.write_table(pa.table({"id": ids, "image": [b"x"] * n}), root / f"s{k}.parquet")
        start += n
    return str(root)


def out_rows(ids: list[str], unit: str | None = None) -> pa.Table:
    n = len(ids)
    t = pa.table({"id": ids, "text": ["t"] * n, "finish_reason": ["stop"] * n, "error": [None] * n,
                  "num_prompt_tokens": pa.array([3] * n, pa.int32()),
                  "num_generated_tokens": pa.array([2] * n, pa.int32()), "model": ["m"] * n},
                 schema=output_schema())
    return t if unit is None else t.append_column(UNIT_COLUMN, pa.array([unit] * n, pa.string()))


def setup(tmp_path, sizes=(4, 4, 4), fmt="parquet", **kw):
    config = JobConfig(model="m", input=shards(tmp_path / "in", list(sizes)), output=str(tmp_path / "out"),
                       output_format=fmt, **kw)
    sink = OutputSink(config.output, output_schema(), fmt)
    sink.prepare(config)
    return config, sink


def writer(sink, plan, rows_per_file=100) -> PartWriter:
    return PartWriter(sink, Progress(None, 1e9, out=io.StringIO()), rows_per_file, plan)


def key(i: int) -> str:
    return unit_key(f"s{i}.parquet")


def output_ids(sink) -> list[str]:
    return sorted(i for p in sink.parts() for i in sink.ids_of([p]))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_finished_files_are_not_read_and_partial_ones_lose_only_their_ids(tmp_path, fmt):
    config, sink = setup(tmp_path, fmt=fmt)
    plan = plan_resume(config, sink)
    assert plan.read_keys == sorted(key(i) for i in range(3)) and not plan.skip_ids
    assert plan.remaining == 12 and plan.skipped == 0
    w = writer(sink, plan)
    w.add(out_rows(["r0000", "r0001"], key(0)))
    w.add(pa.concat_tables([out_rows(["r0002", "r0003"], key(0)), out_rows(["r0004"], key(1))]))
    assert sink.done_units() == {key(0): 4}  # all of s0's rows arrived: its parts, then its record
    w.flush()  # a crash now: s1 has one committed row, s2 none
    again = plan_resume(config, sink)
    assert again.read_keys == sorted([key(1), key(2)])
    assert again.skip_ids == {"r0004"}  # only the partly written file's ids are loaded
    assert again.expected == {key(1): 3, key(2): 4} and again.skipped == 5 and again.remaining == 7
    w2 = writer(sink, again)
    w2.add(out_rows(["r0005", "r0006", "r0007"], key(1)))
    w2.add(out_rows([f"r{i:04d}" for i in range(8, 12)], key(2)))
    assert set(sink.done_units()) == {key(0), key(1), key(2)}
    assert output_ids(sink) == [f"r{i:04d}" for i in range(12)]
    assert plan_resume(config, sink).nothing_to_read
    assert all(OutputSink.part_unit(p) in {key(0), key(1), key(2)} for p in sink.parts())


def test_crash_before_the_record_is_healed_by_the_next_plan(tmp_path):
    config, sink = setup(tmp_path, sizes=(3, 2))
    sink.write(out_rows(["r0000", "r0001", "r0002"]).cast(output_schema()), unit=key(0))  # record never written
    plan = plan_resume(config, sink)
    assert plan.read_keys == [key(1)] and sink.done_units() == {key(0): 3} and not plan.skip_ids


def test_retried_and_repeated_rows_are_dropped_and_finish_records_the_rest(tmp_path):
    config, sink = setup(tmp_path, sizes=(2, 3))
    plan = plan_resume(config, sink)
    w = writer(sink, plan)
    w.add(out_rows(["r0000", "r0001"], key(0)))
    w.add(out_rows(["r0000"], key(0)))  # a retried batch of a finished unit
    w.add(out_rows(["r0002", "r0002"], key(1)))  # an id repeated: written once, the unit never counts full
    assert w.dropped == 2 and sink.done_units() == {key(0): 2}
    w.add(out_rows(["r0003"], "not-a-unit-of-this-input"))
    w.finish()  # the stream ended complete: every unit it read is finished
    assert sink.done_units() == {key(0): 2, key(1): 3}
    assert sum(OutputSink.part_unit(p) is None for p in sink.parts()) == 1  # the unknown key named nothing
    assert output_ids(sink) == ["r0000", "r0001", "r0002", "r0003"]


def test_old_outputs_without_units_still_resume(tmp_path):
    config, sink = setup(tmp_path, sizes=(2, 2))
    sink.write(out_rows(["r0000", "r0003"]))  # a part as the previous version named it: no unit
    assert OutputSink.part_unit(sink.parts()[0]) is None
    plan = plan_resume(config, sink)
    assert plan.read_keys == sorted([key(0), key(1)]) and plan.skip_ids == {"r0000", "r0003"}
    assert plan.skipped == 2 and plan.remaining is None  # those ids may be in any file
    w = writer(sink, plan)
    w.add(out_rows(["r0001"], key(0)))
    w.add(out_rows(["r0002"], key(1)))
    w.finish()
    assert output_ids(sink) == ["r0000", "r0001", "r0002", "r0003"]
    assert rows_already_done(config) == 4 and plan_resume(config, sink).nothing_to_read


def test_a_moved_input_reads_the_ids_of_units_it_does_not_know(tmp_path, capsys):
    config, sink = setup(tmp_path, sizes=(2,))
    sink.write(out_rows(["r0000"]).cast(output_schema()), unit=unit_key("elsewhere/s0.parquet"))
    plan = plan_resume(config, sink)
    assert plan.skip_ids == {"r0000"} and plan.foreign_units == 1 and plan.read_keys == [key(0)]
    assert "not in this --input" in capsys.readouterr().err


def test_overwrite_removes_records_and_a_finished_output_needs_no_ids(tmp_path, monkeypatch):
    config, sink = setup(tmp_path, sizes=(2, 2))
    w = writer(sink, plan_resume(config, sink))
    w.add(out_rows(["r0000", "r0001"], key(0)))
    w.add(out_rows(["r0002", "r0003"], key(1)))
    monkeypatch.setattr(OutputSink, "ids_of", lambda self, parts: pytest.fail("read ids") if parts else set())
    assert rows_already_done(config) == 4 and plan_resume(config, sink).nothing_to_read
    monkeypatch.undo()
    forced = JobConfig(model="m", input=config.input, output=config.output, prompt="other", overwrite=True)
    OutputSink(config.output, output_schema()).prepare(forced)
    assert sink.done_units() == {} and sink.parts() == []


def test_units_from_globs_files_and_ray_paths(tmp_path):
    config, _ = setup(tmp_path, sizes=(1, 1))
    for uri in (config.input, config.input + "/*.parquet", config.input + "/s1.parquet"):
        units = input_units(JobConfig(model="m", input=uri, output="o"))
        assert units.base == str(tmp_path / "in") + "/" and key(1) in units.files
    assert input_units(JobConfig(model="m", input=config.input, output="o", keep_columns=("path",))) is None
    t = tag_units(pa.table({"id": ["a"], "path": [str(tmp_path / "in" / "s1.parquet")]}), str(tmp_path / "in") + "/")
    assert t.column_names == ["id", UNIT_COLUMN] and t.column(UNIT_COLUMN).to_pylist() == [key(1)]


def test_records_are_small_json_named_by_key_and_rows(tmp_path):
    config, sink = setup(tmp_path, sizes=(2,))
    sink.mark_done(key(0), "s0.parquet", 2)
    [record] = (tmp_path / "out" / "_vlmcap_done").iterdir()
    assert record.name == f"{key(0)}-2.json" and json.loads(record.read_text()) == {"unit": "s0.parquet", "rows": 2}
