"""Resume at scale, no model: driver time and peak memory over an output that already holds N ids, against
the old way (every part's ids read into one set).

    python scripts/bench_resume.py --ids 1000000 5000000 20000000 --rows-per-file 10000 --partial 4 [--ray]

For each N it writes synthetic input (N / rows-per-file Parquet files: id + a 1-byte image) and an output
in which every input file is finished (parts + a completion record) except --partial files that are half
written (parts, no record), then runs each case in a fresh process and prints one JSON line:
- finished: the same output with every record (what a re-run of a finished job plans);
- partial: --partial files half written (their ids are the only ones read);
- old: the partial case's ids in parts without units (what an output of the previous version costs, and what
  every resume cost before units).
Planning alone (`plan_resume`, no Ray) by default. `--ray` also runs the real `run_job` in each case on a local
Ray (2 CPUs) with the model stages replaced by an echo stage (each row's text is its id; `EchoProcessor`):
planning, reading the unfinished files, dropping written ids, the driver's part writer. It records the time
from `run_job` to the first new row at the driver and to its first committed part (Ray's start-up before
`run_job` is reported apart: it does not depend on the output), and the driver's peak memory; the job is
stopped after that first part (the old case at 20M ids would take hours to finish on two cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(root: Path, ids: int, per_file: int, partial: int) -> None:
    from pipeline.job_config import JobConfig
    from pipeline.resume import unit_key
    from pipeline.schema import output_schema
    from pipeline.sink import OutputSink

    files = ids // per_file
    (root / "in").mkdir(parents=True)
    for case in ("finished", "partial", "old"):
        config = JobConfig(model="m", input=str(root / "in"), output=str(root / case))
        OutputSink(config.output, output_schema()).prepare(config)
    for f in range(files):
        id_col = pa.array([f"img-{f:06d}-{i:06d}" for i in range(per_file)], pa.string())
        pq.write_table(pa.table({"id": id_col, "image": pa.array([b"x"] * per_file, pa.binary())}),
                       root / "in" / f"shard-{f:06d}.parquet")
        n = per_file
        out = pa.table({"id": id_col, "text": pa.nulls(n, pa.string()), "finish_reason": pa.array(["stop"] * n),
                        "error": pa.nulls(n, pa.string()), "num_prompt_tokens": pa.array([0] * n, pa.int32()),
                        "num_generated_tokens": pa.array([0] * n, pa.int32()), "model": pa.array(["m"] * n)},
                       schema=output_schema())
        key, rel = unit_key(f"shard-{f:06d}.parquet"), f"shard-{f:06d}.parquet"
        for case in ("finished", "partial"):
            sink = OutputSink(str(root / case), output_schema())
            half = case == "partial" and f < partial
            sink.write(out.slice(0, n // 2) if half else out, unit=key)
            if not half:
                sink.mark_done(key, rel, n)
        # The partial case's rows, the way the previous version wrote them (no units): the same rows remain.
        OutputSink(str(root / "old"), output_schema()).write(out.slice(0, n // 2) if f < partial else out)


def measure(root: Path, case: str) -> dict:
    import pipeline.sources  # noqa: F401 - imports ray: not part of what is timed
    from pipeline.job_config import JobConfig
    from pipeline.resume import plan_resume
    from pipeline.schema import output_schema
    from pipeline.sink import OutputSink

    config = JobConfig(model="m", input=str(root / "in"), output=str(root / case))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if case == "old":  # the previous version: every part's ids into one set, shipped as one sorted array
        ids = OutputSink(config.output, output_schema()).existing_ids()
        arr = pa.array(sorted(ids), pa.string())
        loaded, to_read = len(arr), None
    else:
        plan = plan_resume(config, OutputSink(config.output, output_schema()))
        loaded, to_read = len(plan.skip_ids), len(plan.read_keys)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"case": case, "plan_s": round(seconds, 2), "ids_loaded": loaded, "files_to_read": to_read,
            "peak_rss_mib": round(peak / 1024), "rss_growth_mib": round((peak - base) / 1024)}


class EchoProcessor:
    """`builder.CaptionProcessor` without a model: every row comes back as an output row whose text is its id
    (and its input unit, for the part writer). Everything else `run_job` does is the real code."""

    def __init__(self, config, keep_types=None, *, input_checked: bool = False):
        from pipeline.schema import output_schema

        self.config, self.schema = config, output_schema(keep_types or {})

    def __call__(self, ds):
        import numpy as np

        from pipeline.postprocess import to_output_table
        from pipeline.resume import UNIT_COLUMN

        schema = self.schema

        def echo(t: pa.Table) -> pa.Table:
            ids = np.array([str(x) for x in t.column("id").to_pylist()], dtype=object)
            zeros = np.zeros(len(ids), np.int32)
            batch = {"id": ids, "text": ids, "finish_reason": np.array(["stop"] * len(ids), dtype=object),
                     "error": np.array([None] * len(ids), dtype=object), "num_prompt_tokens": zeros,
                     "num_generated_tokens": zeros}
            if UNIT_COLUMN in t.column_names:
                batch[UNIT_COLUMN] = np.array(t.column(UNIT_COLUMN).to_pylist(), dtype=object)
            return to_output_table(batch, "echo", schema)

        return ds.map_batches(echo, batch_format="pyarrow")


class FirstPart(Exception):
    """Raised from the sink once the first new part is committed: the measurement ends there."""


def measure_ray(root: Path, case: str) -> dict:
    import ray

    from pipeline import builder
    from pipeline.job_config import JobConfig
    from pipeline.part_writer import PartWriter
    from pipeline.sink import OutputSink

    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="error")
    ray_init_s = time.perf_counter() - t
    builder.check_model = lambda config: None  # no model to check
    builder.CaptionProcessor = EchoProcessor
    marks: dict[str, float] = {}
    add, write = PartWriter.add, OutputSink.write

    def first_add(self, table):
        if table.num_rows and "row" not in marks:
            marks["row"] = time.perf_counter()
        return add(self, table)

    def first_write(self, table, *args, **kw):
        result = write(self, table, *args, **kw)
        if "part" not in marks:
            marks["part"] = time.perf_counter()
            raise FirstPart
        return result

    PartWriter.add, OutputSink.write = first_add, first_write
    config = JobConfig(model="m", input=str(root / "in"), output=str(root / case), rows_per_file=1000,
                       progress_interval_s=3600.0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        summary = builder.run_job(config)
    except FirstPart:
        summary = None
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    since = {k: round(v - t, 2) for k, v in marks.items()}
    row = {"case": case, "mode": "ray", "ray_init_s": round(ray_init_s, 1), "first_row_s": since.get("row"),
           "first_part_s": since.get("part"), "run_job_s": round(seconds, 2),
           "rows_written": summary.get("rows_written") if summary else None,
           "peak_rss_mib": round(peak / 1024), "rss_growth_mib": round((peak - base) / 1024)}
    ray.shutdown()
    return row


def run_case(root: str, case: str, mode: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--measure", root, case, mode], capture_output=True, text=True)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if res.returncode == 0 and lines else {"case": case, "error": res.stderr[-800:]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    p.add_argument("--rows-per-file", type=int, default=10_000)
    p.add_argument("--partial", type=int, default=4)
    p.add_argument("--ray", action="store_true", help="also time the first new row through run_job on a local Ray")
    p.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # root case mode: one measurement here
    args = p.parse_args()
    if args.measure:
        root, case, mode = args.measure
        print(json.dumps((measure_ray if mode == "ray" else measure)(Path(root), case)), flush=True)
        return
    for n in args.ids:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            build(Path(d), n, args.rows_per_file, args.partial)
            built = round(time.perf_counter() - t, 1)
            for mode in ("plan", "ray") if args.ray else ("plan",):
                for case in ("finished", "partial", "old"):
                    row = run_case(d, case, mode)
                    print(json.dumps({"ids": n, "files": n // args.rows_per_file, "build_s": built, **row}),
                          flush=True)


if __name__ == "__main__":
    main()
