"""Run a sweep's cells: prepare each task's input once, then per (model, task, setting) run the caption
pipeline (`pipeline.builder.run_job`, unchanged) into the cell's directory and score it.

Contract: `run_sweep(sweep, run_id)` needs a started Ray (the caller's `ray.init`) only when some cell has
rows left to generate, and returns one result record per cell (also written as `<cell>/cell.json`, last).
A cell whose `cell.json` has the same inputs fingerprint is skipped; one with a different fingerprint is
refused (`ValueError`: a run id names one configuration; start a new run id). An unfinished cell resumes
from its committed rows; rows that are all written already skip the pipeline and go straight to scoring.
`mark_finished(sweep, run_id)` (after the results are written) writes the run's HTML report and marks it
finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time

from pipeline.eval.prepare import Prepared, prepare_task
from pipeline.eval.score import score_cell
from pipeline.eval.sweep import CELL_FILE, Sweep, code_version, model_fingerprint, read_json, write_json
from pipeline.eval.tasks import Setting, TaskSpec
from pipeline.job_config import JobConfig

KEEP = ("question", "answers", "options")


def cell_uri(sweep: Sweep, run_id: str, model: str, task: str, setting: str) -> str:
    return f"{sweep.output}/{run_id}/{model}/{task}/{setting}"


def job_config(sweep: Sweep, model: str, task: TaskSpec, setting: Setting, prepared: Prepared, out: str) -> JobConfig:
    """The caption job of one cell: the prepared rows, the setting's rendered prompt column, kept answers."""
    spec = setting.apply(task)
    fields = {
        "input": prepared.uri, "output": out, "prompt": None, "prompt_column": f"prompt__{setting.name}",
        "image_column": "image", "video_column": None, "id_column": "id", "keep_columns": KEEP,
        "max_new_tokens": spec.max_new_tokens, "temperature": spec.temperature,
        **sweep.job, **sweep.models[model], **setting.extra}
    if setting.seed is not None:
        fields["seed"] = setting.seed
    return JobConfig.from_dict(fields)


def cell_fingerprint(config: JobConfig, task: TaskSpec, setting: Setting, prepared: Prepared, model_fp: str) -> str:
    blob = json.dumps({"job": config.fingerprint(), "task": setting.apply(task).fingerprint(),
                       "setting": dataclasses.asdict(setting), "data": prepared.fingerprint, "model": model_fp},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def choose_run_id(sweep: Sweep, requested: str | None) -> str:
    """`requested`, else the latest unfinished run of this same sweep (so a plain re-run after a crash
    resumes it), else a new UTC timestamp id. Records the sweep's fingerprint in `<run>/run.json`."""
    import fsspec

    if requested is None:
        fs, root = fsspec.core.url_to_fs(sweep.output)
        candidates = []
        if fs.exists(root):
            for path in fs.ls(root, detail=False):
                info = read_json(f"{sweep.output}/{path.rstrip('/').rsplit('/', 1)[-1]}/run.json")
                if info and not info.get("finished") and info.get("sweep") == sweep.fingerprint():
                    candidates.append(info)
        requested = max(candidates, key=lambda i: i["started_at"])["run_id"] if candidates else \
            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", requested):
        raise ValueError(f"--run-id {requested!r} must be letters, digits, '_', '.' or '-'")
    info = read_json(f"{sweep.output}/{requested}/run.json")
    if info is None:
        write_json(f"{sweep.output}/{requested}/run.json", {"run_id": requested, "sweep": sweep.fingerprint(),
                                                             "started_at": time.time(), "finished": False})
    return requested


def mark_finished(sweep: Sweep, run_id: str, log=print) -> None:
    """After `report.write_results`: writes `<run>/report.html`, then marks the run finished. The report
    comes first so that a failure to write it leaves the run unfinished (a re-run skips every cell and
    writes it again) instead of a finished run without its report."""
    from pipeline.eval.html_report import write_html_report

    log(f"[eval] report: {write_html_report(sweep.output, run_id)}")
    info = read_json(f"{sweep.output}/{run_id}/run.json") or {"run_id": run_id, "started_at": time.time()}
    write_json(f"{sweep.output}/{run_id}/run.json", {**info, "sweep": sweep.fingerprint(), "finished": True})


def run_sweep(sweep: Sweep, run_id: str, log=print) -> list[dict]:
    version = code_version()
    prepared = {}
    for task in sweep.tasks:
        variants = {s.name: s.apply(task) for s in sweep.settings}
        prepared[task.name] = prepare_task(task, variants, sweep.output, sweep.limit)
        log(f"[eval] task {task.name}: {prepared[task.name].rows} rows prepared at {prepared[task.name].uri}")
    model_fps = {name: model_fingerprint(entry["model"]) for name, entry in sweep.models.items()}
    records = []
    for model in sweep.models:
        for task in sweep.tasks:
            for setting in sweep.settings:
                records.append(run_cell(sweep, run_id, model, task, setting, prepared[task.name],
                                        model_fps[model], version, log))
    return records


def run_cell(sweep: Sweep, run_id: str, model: str, task: TaskSpec, setting: Setting, prepared: Prepared,
             model_fp: str, version: str, log=print) -> dict:
    out = cell_uri(sweep, run_id, model, task.name, setting.name)
    config = job_config(sweep, model, task, setting, prepared, out)
    fingerprint = cell_fingerprint(config, task, setting, prepared, model_fp)
    name = f"{model}/{task.name}/{setting.name}"
    done = read_json(f"{out}/{CELL_FILE}")
    if done is not None:
        if done.get("fingerprint") != fingerprint:
            raise ValueError(f"run {run_id} cell {name} was finished with other inputs (model files, task spec, "
                             "settings or data changed); start a new --run-id")
        log(f"[eval] {name}: finished earlier, skipped")
        return done
    summary = generate(config, name, log)
    start = time.monotonic()
    results = score_cell(out, setting.apply(task))
    record = {
        "run_id": run_id, "model": model, "task": task.name, "setting": setting.name, "fingerprint": fingerprint,
        "model_path": sweep.models[model]["model"], "model_fingerprint": model_fp, "task_fingerprint":
        setting.apply(task).fingerprint(), "data_fingerprint": prepared.fingerprint, "code_version": version,
        "headline": task.metrics[0], "metrics": results, "rows": prepared.rows,
        "rows_per_s": summary.get("rows_per_s") if summary.get("rows_written") else None,
        "generation": summary, "scoring_s": round(time.monotonic() - start, 3), "finished_at": time.time()}
    write_json(f"{out}/{CELL_FILE}", record)  # last: its presence marks the cell finished
    head = results[task.metrics[0]]
    log(f"[eval] {name}: {task.metrics[0]} {head['value']:.4f} (95% CI {head['ci_low']:.4f}-{head['ci_high']:.4f}, "
        f"n {head['n']}, errors {head['errors']})")
    return record


def generate(config: JobConfig, name: str, log) -> dict:
    """The caption pipeline over the cell's rows; nothing to do when every row is already written."""
    from pipeline.preflight import rows_already_done

    already = rows_already_done(config)
    if already is not None:
        log(f"[eval] {name}: all {already} rows already generated")
        return {"rows_written": 0, "rows_skipped_resume": already}
    from pipeline.builder import run_job

    log(f"[eval] {name}: generating into {config.output}")
    sys.stdout.flush()
    return run_job(config)
