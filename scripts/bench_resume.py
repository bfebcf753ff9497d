"""Resume planning at scale, no model and no Ray: driver time and peak memory of `plan_resume` over an output
that already holds N ids, against the old way (every part's ids read into one set).

    python scripts/bench_resume.py --ids 1000000 5000000 20000000 --rows-per-file 10000 --partial 4

For each N it writes synthetic input (N / rows-per-file Parquet files: id + a 1-byte image) and an output
in which every input file is finished (parts + a completion record) except --partial files that are half
written (parts, no record), then runs each case in a fresh process and prints one JSON line:
- finished: the same output with every record (what a re-run of a finished job plans);
- partial: --partial files half written (their ids are the only ones read);
- old: the same ids in parts without units (what an output of the previous version costs, and what every
  resume cost before units).
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
        OutputSink(str(root / "old"), output_schema()).write(out)


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    p.add_argument("--rows-per-file", type=int, default=10_000)
    p.add_argument("--partial", type=int, default=4)
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # root case: one measurement in this process
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return
    for n in args.ids:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            build(Path(d), n, args.rows_per_file, args.partial)
            built = round(time.perf_counter() - t, 1)
            for case in ("finished", "partial", "old"):
                res = subprocess.run([sys.executable, __file__, "--measure", d, case], capture_output=True, text=True)
                ok = res.returncode == 0
                row = json.loads(res.stdout.strip().splitlines()[-1]) if ok else {"error": res.stderr[-500:]}
                print(json.dumps({"ids": n, "files": n // args.rows_per_file, "build_s": built, **row}), flush=True)


if __name__ == "__main__":
    main()
