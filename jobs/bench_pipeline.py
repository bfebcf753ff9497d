"""End-to-end throughput through Ray Data, from JPEG bytes in Parquet, vs the engine alone (jobs/bench.py).

    python jobs/bench_pipeline.py --model mllama-11b --images 1024 --image-size 1120 --new-tokens 64

Writes --images JPEGs (random smooth-ish pixels, encoded once) into Parquet shards, runs the real job
(`pipeline.builder.CaptionProcessor`: CPU preprocess actors -> GPU actor -> postprocess) with random
weights at the real shapes and EOS ignored, timing each run until the driver has its last output row.
Reports the marginal rate: the job is run three times in one Ray session, on --small-images rows (cold:
discarded), on --images rows, and on --small-images rows again; (images - small) / (wall_big - wall_small)
cancels every fixed cost (Ray start-up, model build, compile + graph capture, the first prefill, and the
ramp and drain both runs share); jobs/bench.py measures the engine alone's marginal rate the same way.
(Rates read off output timestamps mislead: Ray Data hands outputs to the driver in bursts, and the first
ones only after the engine has worked through a long prefill backlog.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.bench import PRESETS, SHARED, bench_dir  # noqa: E402


def write_shards(dest: Path, n: int, size: int, per_file: int = 64) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    base = [rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8) for _ in range(8)]
    jpegs = []
    for i in range(8):  # upsampled noise: JPEG sizes like photos', not like pure noise
        buf = io.BytesIO()
        Image.fromarray(base[i]).resize((size, size), Image.BILINEAR).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    dest.mkdir(parents=True)
    for start in range(0, n, per_file):
        ids = list(range(start, min(n, start + per_file)))
        table = pa.table({"id": [f"img{i:06d}" for i in ids], "image": [jpegs[i % 8] for i in ids]})
        pq.write_table(table, dest / f"shard-{start // per_file:05d}.parquet")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(PRESETS), default="mllama-11b")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--small-images", type=int, default=64, help="the short run subtracted from the long one")
    ap.add_argument("--image-size", type=int, default=1120)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-prefill-requests", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches-in-flight", type=int, default=16, help="x batch size = requests the engine can see")
    ap.add_argument("--preprocess-actors", type=int, nargs=2, default=(4, 12))
    ap.add_argument("--max-model-len", type=int, help="default: 160 for Mllama (as jobs/bench.py sizes it), "
                    "8192 for OneVision")
    ap.add_argument("--preprocess-only", action="store_true", help="time the CPU half alone (decode, tiles, "
                    "tokenize, pack): the rate the GPU stage could at most be fed at")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import ray
    import torch

    from pipeline.builder import CaptionProcessor
    from pipeline.job_config import JobConfig
    from pipeline.sources import read_input

    ckpt = bench_dir(SHARED / PRESETS[args.model])
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    write_shards(work / "big", args.images, args.image_size)
    write_shards(work / "small", args.small_images, args.image_size)
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": path,
                                       **({k: os.environ[k] for k in ("VLMCAP_SHARED_CHECKPOINTS",)
                                           if k in os.environ})}})

    def run(shards: str) -> dict:
        config = JobConfig(model=str(ckpt), input=str(work / shards), output=str(work / "out"), random_weights=True,
                           prompt="Describe this image in detail.", max_new_tokens=args.new_tokens,
                           max_model_len=args.max_model_len or (160 if args.model.startswith("mllama") else 8192),
                           batch_size=args.batch_size, batches_in_flight=args.batches_in_flight,
                           preprocess_actors=tuple(args.preprocess_actors),
                           max_prefill_requests=args.max_prefill_requests, stop=(), ignore_eos=True,
                           engine_report_s=5.0)
        ds, keep = read_input(config)
        processor = CaptionProcessor(config, keep, input_checked=True)  # read_input rows carry ids
        t0 = time.perf_counter()
        rows, errors, first = 0, [], None
        out = processor.preprocess(ds) if args.preprocess_only else processor(ds)
        for table in out.iter_batches(batch_format="pyarrow", batch_size=None):
            errors += [e for e in table.column("error").to_pylist() if e is not None]
            rows += table.num_rows
            first = first or time.perf_counter() - t0
        wall = time.perf_counter() - t0
        if errors:
            print(f"{len(errors)} error rows, first: {errors[0]}", flush=True)
        return {"rows": rows, "errors": len(errors), "wall_s": wall, "first_output_s": first}

    # small (cold caches, discarded), big, small: the difference of the last two cancels every fixed cost
    runs = [run("small"), run("big"), run("small")]
    big, small = runs[1], runs[2]
    result = {"stage": "preprocess" if args.preprocess_only else "end-to-end", "runs": runs,
              "marginal_images_per_s": (big["rows"] - small["rows"]) / (big["wall_s"] - small["wall_s"]),
              "cpus": ray.cluster_resources().get("CPU"),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
