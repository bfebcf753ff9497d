"""`jobs/caption.py`'s answers to ordinary user mistakes: one `caption.py: error: ...` line, exit status 2,
and Ray never started (each case is checked on the driver first, so these tests run in-process in well
under a second each). Also: YAML keys spelled as flags, folder inputs (non-media files ignored, a single
image file, ids relative to the folder), and a re-run with nothing left to do.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest
import ray
from PIL import Image

from jobs.caption import config_from_args, main, parser
from pipeline.job_config import JobConfig
from pipeline.schema import output_schema
from pipeline.sink import OutputSink
from pipeline.sources import input_ids, input_kind, media_files


def jpeg_file(path, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def media(tmp_path):
    folder = tmp_path / "photos"
    jpeg_file(folder / "a.jpg")
    jpeg_file(folder / "trip" / "b.JPG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "meta.json").write_text("{}")
    return folder


def rows(ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({"id": ids, "text": ["x"] * n, "finish_reason": ["stop"] * n, "error": [None] * n,
                     "num_prompt_tokens": pa.array([1] * n, pa.int32()),
                     "num_generated_tokens": pa.array([1] * n, pa.int32()), "model": ["m"] * n},
                    schema=output_schema())


def run(argv, capsys) -> tuple[int, str]:
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert not ray.is_initialized(), "the mistake was found only after Ray started"
    return status, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("caption.py: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_input_path_is_named_before_ray_starts(tiny_ov_dir, tmp_path, capsys):
    status, err = run(["--model", tiny_ov_dir, "--input", tmp_path / "nope", "--output", tmp_path / "o"], capsys)
    assert status == 2 and f"--input {tmp_path / 'nope'} does not exist" in error_line(err)


def test_staged_vision_is_refused_for_onevision_before_ray_starts(tiny_ov_dir, tmp_path, capsys):
    jpeg_file(tmp_path / "in" / "x.jpg")
    status, err = run(["--model", tiny_ov_dir, "--input", tmp_path / "in", "--output", tmp_path / "o",
                       "--stage-vision-images", "2"], capsys)
    assert status == 2 and "--stage-vision-images needs an Mllama model" in error_line(err)


def test_empty_folder_and_output_that_is_a_file(tiny_ov_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no media here")
    status, err = run(["--model", tiny_ov_dir, "--input", tmp_path / "empty", "--output", tmp_path / "o"], capsys)
    assert status == 2 and "holds no image or video files" in error_line(err)
    jpeg_file(tmp_path / "in" / "x.jpg")
    (tmp_path / "out.txt").write_text("a file")
    status, err = run(["--model", tiny_ov_dir, "--input", tmp_path / "in", "--output", tmp_path / "out.txt"], capsys)
    assert status == 2 and "is a file; give a directory" in error_line(err)


def test_bad_or_missing_yaml_and_missing_flags(tmp_path, capsys):
    status, err = run(["--config", tmp_path / "nope.yaml"], capsys)
    assert status == 2 and "cannot read --config" in error_line(err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ninput: [unclosed\n")
    status, err = run(["--config", bad], capsys)
    assert status == 2 and "is not valid YAML (line" in error_line(err)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: m\ninput: i\noutput: o\nmax-new-tokenz: 3\n")
    status, err = run(["--config", unknown], capsys)
    assert status == 2 and "unknown options ['max_new_tokenz']" in error_line(err)
    status, err = run(["--input", tmp_path], capsys)
    assert status == 2 and "missing --model --output" in error_line(err)


def test_yaml_keys_may_be_flag_names(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("model: m\ninput: i\noutput: o\nmax-new-tokens: 7\nmax_model_len: 900\n--top-p: 0.5\n"
                   "progress-interval: 2\nstall-timeout: 30\nno-cuda-graphs: true\nkeep-columns: [a, b]\n")
    config = config_from_args(parser().parse_args(["--config", str(cfg), "--seed", "3"]), parser())
    assert (config.max_new_tokens, config.max_model_len, config.top_p, config.seed) == (7, 900, 0.5, 3)
    assert (config.progress_interval_s, config.stall_timeout_s, config.cuda_graphs) == (2, 30, False)
    assert config.keep_columns == ("a", "b")


def test_changed_setting_is_named_before_ray_starts(tiny_ov_dir, media, tmp_path, capsys):
    out = tmp_path / "o"
    first = JobConfig(model=str(tiny_ov_dir), input=str(media), output=str(out), max_new_tokens=8)
    sink = OutputSink(first.output, output_schema())
    sink.prepare(first)
    sink.write(rows(["a.jpg"]))
    status, err = run(["--model", tiny_ov_dir, "--input", media, "--output", out, "--max-new-tokens", "9"], capsys)
    assert status == 2 and "--max-new-tokens: 8 -> 9" in error_line(err)
    status, err = run(["--model", tiny_ov_dir, "--input", media, "--output", out, "--max-new-tokens", "8",
                       "--output-format", "jsonl"], capsys)
    assert status == 2 and "holds parquet output but --output-format is jsonl" in error_line(err)


def test_folder_inputs_ignore_other_files_and_ids_are_relative(media):
    base, files = media_files(str(media))
    assert [f.removeprefix(base) for f in files] == ["a.jpg", "trip/b.JPG"]
    single = media / "a.jpg"
    assert input_kind(str(single)) == "folder"
    assert input_ids(JobConfig(model="m", input=str(single), output="o")) == {"a.jpg"}
    with pytest.raises(ValueError, match="not a parquet file"):
        input_kind(str(media / "notes.txt"))


def test_nothing_left_to_do_ends_without_ray(tiny_ov_dir, media, tmp_path, capsys):
    out = tmp_path / "o"
    config = JobConfig(model=str(tiny_ov_dir), input=str(media), output=str(out), max_new_tokens=8)
    sink = OutputSink(config.output, output_schema())
    sink.prepare(config)
    sink.write(rows(["a.jpg"]))
    sink.write(rows(["trip/b.JPG"]))
    status = main(["--model", str(tiny_ov_dir), "--input", str(media), "--output", str(out), "--max-new-tokens", "8"])
    captured = capsys.readouterr()
    assert status == 0 and not ray.is_initialized()
    assert "nothing to do: all 2 input rows are already in" in captured.out
    assert json.loads(captured.out.strip().splitlines()[-1])["rows_skipped_resume"] == 2
