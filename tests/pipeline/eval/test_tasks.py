"""Task specs and sweep YAML parsing, and the prepared input (columns, prompts, answers, ids, reuse)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.eval.builtin_tasks import BUILTIN_TASKS
from pipeline.eval.prepare import prepare_task
from pipeline.eval.sweep import sweep_from_dict
from pipeline.eval.tasks import Setting, TaskSpec, load_task


def test_builtins_parse_and_use_lmms_eval_prompts():
    assert set(BUILTIN_TASKS) == {"vqav2", "textvqa", "docvqa", "chartqa", "mmmu", "coco_captions", "easy_vqa"}
    assert load_task("vqav2").prompt == "{question}\nAnswer the question using a single word or phrase."
    assert load_task("docvqa").metrics == ("anls",)
    assert load_task("mmmu").mc_prompt.endswith("Answer with the option's letter from the given choices directly.")
    assert load_task({"name": "coco_captions", "input": "x.parquet"}).input == "x.parquet"


def test_task_from_yaml_file_and_errors(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("metrics: exact_match\nprompt: '{question} ({hint})'\nimage_columns: img\n")
    task = load_task({"spec": "mine.yaml", "input": "d.jsonl"}, base_dir=tmp_path)
    assert (task.name, task.metrics, task.image_columns) == ("mine", ("exact_match",), ("img",))
    with pytest.raises(ValueError, match="unknown metric"):
        TaskSpec(name="t", metrics=("bleu7",))
    with pytest.raises(ValueError, match="unknown keys"):
        load_task({"name": "vqav2", "promt": "x"})
    with pytest.raises(ValueError, match="not a built-in"):
        load_task("nope")
    with pytest.raises(ValueError, match="malformed"):
        TaskSpec(name="t", metrics=("exact_match",), prompt="{question")


def test_sweep_parsing():
    sweep = sweep_from_dict({
        "output": "/o", "models": {"a": "/ckpt/a", "b": {"model": "/ckpt/b", "replicas": 2}},
        "tasks": [{"vqav2": {"input": "v.parquet"}}, "easy_vqa"],
        "settings": [{"name": "default"}, {"name": "short", "max_new_tokens": 4, "top_p": 0.9}], "limit": 3})
    assert sweep.models["b"] == {"model": "/ckpt/b", "replicas": 2}
    assert [t.name for t in sweep.tasks] == ["vqav2", "easy_vqa"] and sweep.tasks[0].input == "v.parquet"
    short = sweep.settings[1]
    assert short.extra == {"top_p": 0.9} and short.apply(sweep.tasks[0]).max_new_tokens == 4
    with pytest.raises(ValueError, match="setting name"):
        sweep_from_dict({"output": "/o", "models": {"a": "/a"}, "tasks": ["vqav2"], "settings": [{"name": "a b"}]})
    with pytest.raises(ValueError, match="keys"):
        sweep_from_dict({"output": "/o", "models": {"a": "/a"}, "tasks": ["vqav2"], "model": 1})


def test_prepare_parquet_hf_layout(tmp_path):
    """VQAv2-like answers dicts, HF image structs, MMMU-like options literal and several image columns."""
    table = pa.table({
        "question_id": [7, 8],
        "image_1": [{"bytes": b"img-a", "path": None}, {"bytes": b"img-b", "path": None}],
        "image_2": [None, {"bytes": b"img-c", "path": None}],
        "question": ["What is it?", "Which one?"],
        "answers": [[{"answer": "cat", "answer_id": 1}], [{"answer": "B", "answer_id": 1}]],
        "options": ["[]", "['red car', \"dog's toy\"]"],
    })
    pq.write_table(table, tmp_path / "in.parquet")
    task = TaskSpec(name="t", metrics=("choice_accuracy",), input=str(tmp_path / "in.parquet"),
                    id_column="question_id", image_columns=("image_1", "image_2"), options_column="options",
                    prompt="{question} short", mc_prompt="{question}\n{options}\nLetter.")
    prompts = {"default": task, "v2": Setting(name="v2", prompt="Q: {question}").apply(task)}
    prepared = prepare_task(task, prompts, str(tmp_path / "out"))
    rows = pq.read_table(prepared.uri + "/data.parquet").to_pylist()
    assert prepared.rows == 2 and [r["id"] for r in rows] == ["7", "8"]
    assert rows[0]["image"] == [b"img-a"] and rows[1]["image"] == [b"img-b", b"img-c"]
    assert rows[0]["answers"] == ["cat"] and rows[1]["options"] == ["red car", "dog's toy"]
    assert rows[0]["prompt__default"] == "What is it? short"
    assert rows[1]["prompt__default"] == "Which one?\nA. red car\nB. dog's toy\nLetter."
    assert rows[1]["prompt__v2"] == "Which one?\nA. red car\nB. dog's toy\nLetter."  # mc_prompt wins for MC rows
    assert rows[0]["prompt__v2"] == "Q: What is it?"
    # the same task and prompts again: the prepared directory is reused, not rewritten
    mtime = (tmp_path / "out" / "_prepared" / prepared.uri.rsplit("/", 1)[-1] / "data.parquet").stat().st_mtime_ns
    again = prepare_task(task, prompts, str(tmp_path / "out"))
    assert again == prepared
    assert (tmp_path / "out" / "_prepared" / prepared.uri.rsplit("/", 1)[-1] / "data.parquet").stat().st_mtime_ns \
        == mtime


def test_prepare_jsonl_paths_positional_ids_limit_and_missing_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    lines = [{"img": f"imgs/{i}.png", "question": f"q{i}", "answer": str(i), "hint": "h"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    task = TaskSpec(name="j", metrics=("exact_match",), input=str(tmp_path / "d.jsonl"), id_column=None,
                    image_columns=("img",), answers_column="answer", prompt="{question} ({hint})")
    prepared = prepare_task(task, {"default": task}, str(tmp_path / "out"), limit=3)
    rows = pq.read_table(prepared.uri + "/data.parquet").to_pylist()
    assert [r["id"] for r in rows] == ["d.jsonl:0", "d.jsonl:1", "d.jsonl:2"]
    assert rows[1]["image"] == str(tmp_path / "imgs" / "1.png") and rows[1]["answers"] == ["1"]
    assert rows[2]["prompt__default"] == "q2 (h)"
    bad = TaskSpec(name="j", metrics=("exact_match",), input=str(tmp_path / "d.jsonl"), image_columns=("img",),
                   answers_column="answer")
    with pytest.raises(ValueError, match=r"lacks columns \['id'\]"):
        prepare_task(bad, {"default": bad}, str(tmp_path / "out2"))


def test_easy_vqa_converter_feeds_the_builtin_task(tmp_path):
    """The converter on a miniature of the package's data layout, then the built-in spec prepares it."""
    from pipeline.eval.easy_vqa import main as convert_main

    data = tmp_path / "data" / "test"
    (data / "images").mkdir(parents=True)
    for i in range(2):
        (data / "images" / f"{i}.png").write_bytes(f"png-{i}".encode())
    qs = [["what is the red shape?", "triangle", 0], ["is there a circle?", "no", 0], ["what color?", "blue", 1]]
    (data / "questions.json").write_text(json.dumps(qs))
    out = tmp_path / "easy.parquet"
    assert convert_main([str(out), "--data-dir", str(tmp_path / "data")]) == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == ["test-0", "test-1", "test-2"]
    assert rows[2]["image"] == b"png-1" and rows[1]["answer"] == "no"
    task = load_task({"name": "easy_vqa", "input": str(out)})
    prepared = prepare_task(task, {"default": task}, str(tmp_path / "out"))
    got = pq.read_table(prepared.uri + "/data.parquet").to_pylist()
    assert got[0]["answers"] == ["triangle"]
    assert got[0]["prompt__default"] == "what is the red shape?\nAnswer the question using a single word or phrase."
    with pytest.raises(ValueError, match=r"no input given .*python -m pipeline\.eval\.easy_vqa"):
        prepare_task(BUILTIN_TASKS["easy_vqa"], {"default": task}, str(tmp_path / "out"))  # says how to make one
