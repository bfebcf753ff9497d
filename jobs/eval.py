"""Evaluation sweeps: models x tasks x settings through the caption pipeline, scored, resumable.

    python jobs/eval.py --sweep sweep.yaml [--run-id ID] [--compare-to previous|RUN_ID] [--max-regression PTS]
    ray job submit --working-dir . -- python jobs/eval.py --sweep sweep.yaml

Each cell (model, task, setting) runs `jobs/caption.py`'s pipeline into <output>/<run_id>/<model>/<task>/
<setting>/ and is scored there (scores.parquet, cell.json). Per run: results.parquet/.json/.md; across
runs: <output>/history/ and <output>/trend.md. Re-running resumes the latest unfinished run of the same
sweep (or --run-id): finished cells are skipped, unfinished ones continue from their committed rows.

Exit status: 0 done, 1 runtime failure, 2 usage or configuration error, 3 regression (--max-regression /
--fail-below), 130 interrupted (committed rows are kept; re-run to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", type=Path, required=True, help="sweep YAML (output, models, tasks, settings, limit, job)")
    p.add_argument("--output", help="override the sweep's output location (local or s3://)")
    p.add_argument("--run-id", help="run to write or resume (default: the latest unfinished run of this sweep, "
                   "else a new UTC timestamp)")
    p.add_argument("--compare-to", help="'previous' or a run id: print and record deltas against it")
    p.add_argument("--max-regression", type=float, help="exit 3 when a headline metric falls by more than this "
                   "many points (x100 for [0,1] metrics) against --compare-to (default previous)")
    p.add_argument("--fail-below", type=float, help="exit 3 when a headline metric is below this value")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own logs")
    return p


def fail(message: str, status: int) -> int:
    print(f"eval.py: error: {message}", file=sys.stderr, flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from models.errors import InputError
    from pipeline.eval import report
    from pipeline.eval.runner import choose_run_id, mark_finished, run_sweep
    from pipeline.eval.sweep import load_sweep
    from pipeline.sink import ConfigMismatchError

    try:
        sweep = load_sweep(args.sweep, output=args.output)
        run_id = choose_run_id(sweep, args.run_id)
    except ValueError as exc:
        return fail(str(exc), 2)
    print(f"[eval] run {run_id} -> {sweep.output}/{run_id}", flush=True)
    _start_ray(args.verbose)
    from pipeline.watchdog import JobStalledError

    try:
        records = run_sweep(sweep, run_id)
    except (ValueError, ConfigMismatchError, InputError) as exc:  # InputError is a ValueError
        return fail(str(exc), 2)
    except JobStalledError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        print(f"[eval] interrupted: committed rows are kept; re-run to resume run {run_id}", file=sys.stderr)
        return 130
    history = report.load_history(sweep.output)
    compare_to = args.compare_to or ("previous" if args.max_regression is not None else None)
    deltas = None
    if compare_to:
        try:
            base = report.baseline(history, run_id, compare_to)
        except ValueError as exc:
            return fail(str(exc), 2)
        if base is not None:
            deltas = report.compare(report.result_rows(records), base)
            print(f"[eval] compared to run {base['run_id']}", flush=True)
    rows = report.write_results(sweep.output, run_id, records, deltas)
    mark_finished(sweep, run_id)
    report.write_trend(sweep.output)
    print(report.results_markdown(run_id, rows, deltas), flush=True)
    print(json.dumps({"run_id": run_id, "cells": len(records), "results": f"{sweep.output}/{run_id}/results.md"}))
    problems = report.regressions(rows, deltas or {}, args.max_regression, args.fail_below)
    for p in problems:
        print(f"[eval] REGRESSION: {p}", file=sys.stderr, flush=True)
    return 3 if problems else 0


def _start_ray(verbose: bool) -> None:
    """As jobs/caption.py does: a local cluster's workers need the repo on their path. An already started
    Ray (tests, a notebook) is used as it is."""
    import ray

    from pipeline.logs import quiet_ray

    if ray.is_initialized():
        return
    quiet_ray(verbose=verbose)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
             logging_level=logging.INFO if verbose else logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": path}} if "RAY_ADDRESS" not in os.environ else None)


if __name__ == "__main__":
    from pipeline.watchdog import exit_process

    exit_process(main())
