"""Tensor parallelism through Ray on one multi-GPU node: `jobs/caption.py --tp 2` vs `--replicas 2 --tp 1` on
the same Parquet rows, and a tensor-parallel rank SIGKILLed mid-job. Run on a 2-GPU machine:

    python scripts/tp_ray_check.py --model /tmp/mllama-11b-random --rows 256 --work /tmp/tp_ray

(`--model`: a real checkpoint directory, e.g. one written by scripts/write_random_checkpoint.py; loading it
under --tp 2 reads each rank's slices of the real files.) Every run must write every id exactly once; the
script prints one line per run (exit status, wall seconds, rows, errors, the job's own rows/s), the share
of rows whose text is the same under tp=2 and tp=1, and whether the killed rank was reported, and exits 1
if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.bench_pipeline import write_shards  # noqa: E402

NCCL_SAFETY = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")


def worker_env() -> dict:
    """What a Ray GPU worker on this node sees of the NVLink-multicast switches (they must stay set)."""
    import ray

    ray.init(include_dashboard=False, logging_level="warning")
    try:
        @ray.remote(num_gpus=1)
        def probe() -> dict:
            return {k: os.environ.get(k) for k in NCCL_SAFETY}

        return ray.get(probe.remote())
    finally:
        ray.shutdown()


def run(name: str, args: list[str], work: Path, base: list[str]) -> dict:
    out = work / name
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "caption.py"), *base, "--output", str(out), *args],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / f"{name}.stdout").write_text(proc.stdout)
    (work / f"{name}.stderr").write_text(proc.stderr)
    rows = pds.dataset(str(out), format="parquet").to_table().to_pylist() if out.exists() else []
    ids = [r["id"] for r in rows]
    done = next((ln for ln in proc.stdout.splitlines() if "[caption] done:" in ln), "")
    result = {"name": name, "rc": proc.returncode, "wall_s": round(wall, 1), "rows": len(rows),
              "unique_ids": len(set(ids)), "errors": sum(r["error"] is not None for r in rows), "done_line": done,
              "texts": {r["id"]: r["text"] for r in rows}}
    print(json.dumps({k: v for k, v in result.items() if k != "texts"}), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--kill-rows", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=1120)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tp_ray"))
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    env = worker_env()
    print(f"Ray GPU worker env: {env}", flush=True)
    ok = all(env.get(k) for k in NCCL_SAFETY)
    write_shards(args.work / "data", args.rows, args.image_size)
    base = ["--model", args.model, "--input", str(args.work / "data"), "--prompt", "Describe this image.",
            "--max-new-tokens", "64", "--ignore-eos", "--max-prefill-requests", "16", "--batch-size", "32",
            "--engine-report-interval", "20"]
    results = [run("tp2", ["--tp", "2"], args.work, base), run("replicas2", ["--replicas", "2"], args.work, base)]
    for r in results:
        ok &= r["rc"] == 0 and r["rows"] == r["unique_ids"] == args.rows and r["errors"] == 0
    a, b = results[0]["texts"], results[1]["texts"]
    same = sum(a.get(k) == b.get(k) for k in a) / max(len(a), 1)
    print(f"texts identical under tp=2 and tp=1 (bf16): {same:.0%} of {len(a)} rows", flush=True)

    marker = args.work / "rank_killed"
    kill_cfg = args.work / "kill.yaml"
    kill_cfg.write_text(json.dumps({"fault_injection": {"tp_rank_kill_on_batch": 2, "marker": str(marker)}}))
    killed = run("tp2_rank_killed", ["--tp", "2", "--config", str(kill_cfg), "--limit", str(args.kill_rows)],
                 args.work, base)
    logs = [args.work / "tp2_rank_killed.stderr", *Path("/tmp/ray/session_latest/logs").glob("worker-*.err")]
    reported = any("lost a rank" in p.read_text(errors="replace") for p in logs if p.exists())
    print(f"rank killed: {marker.exists()}, reported: {reported}", flush=True)
    ok &= (killed["rc"] == 0 and killed["rows"] == killed["unique_ids"] == args.kill_rows and marker.exists()
           and reported)
    print("ALL OK" if ok else "CHECK FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
