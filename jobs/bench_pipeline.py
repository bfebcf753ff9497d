"""End-to-end throughput through Ray Data, from JPEG bytes in Parquet, vs the engine alone (jobs/bench.py).

    python jobs/bench_pipeline.py --model mllama-11b --images 512 --image-size 1120 --new-tokens 64

Writes --images JPEGs (random smooth-ish pixels, encoded once) into Parquet shards, runs the real job
(`pipeline.builder.CaptionProcessor`: CPU preprocess actors -> GPU actor -> postprocess) with random
weights at the real shapes and EOS ignored, and timestamps every output batch as the driver receives it.
Reports the steady-state rate (rows between the first and the last output batch over that time: model
load, compile and graph capture excluded, as in the engine-alone benchmark) and the wall time incl. startup.
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
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=1120)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-prefill-requests", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches-in-flight", type=int, default=8, help="x batch size = requests the engine can see")
    ap.add_argument("--preprocess-actors", type=int, nargs=2, default=(4, 12))
    ap.add_argument("--max-model-len", type=int, help="default: 160 for Mllama (as jobs/bench.py sizes it), "
                    "8192 for OneVision")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import ray
    import torch

    from pipeline.builder import CaptionProcessor
    from pipeline.job_config import JobConfig
    from pipeline.sources import read_input

    ckpt = bench_dir(SHARED / PRESETS[args.model])
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    write_shards(work / "in", args.images, args.image_size)
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": path,
                                       **({k: os.environ[k] for k in ("VLMCAP_SHARED_CHECKPOINTS",)
                                           if k in os.environ})}})
    config = JobConfig(model=str(ckpt), input=str(work / "in"), output=str(work / "out"), random_weights=True,
                       prompt="Describe this image in detail.", max_new_tokens=args.new_tokens,
                       max_model_len=args.max_model_len or (160 if args.model.startswith("mllama") else 8192),
                       batch_size=args.batch_size, batches_in_flight=args.batches_in_flight,
                       preprocess_actors=tuple(args.preprocess_actors), max_prefill_requests=args.max_prefill_requests,
                       stop=(), ignore_eos=True)
    ds, keep = read_input(config)
    t0 = time.perf_counter()
    stamps, rows, errors = [], 0, 0
    for table in CaptionProcessor(config, keep)(ds).iter_batches(batch_format="pyarrow", batch_size=None):
        rows += table.num_rows
        errs = [e for e in table.column("error").to_pylist() if e is not None]
        errors += len(errs)
        if errs and errors == len(errs):
            print(f"first error: {errs[0]}", flush=True)
        stamps.append((time.perf_counter() - t0, rows))
    wall = time.perf_counter() - t0
    (t_first, r_first), (t_last, r_last) = stamps[0], stamps[-1]
    steady = (r_last - r_first) / (t_last - t_first) if t_last > t_first else float("nan")
    result = {"rows": rows, "errors": errors, "wall_s": wall, "first_output_s": t_first,
              "steady_images_per_s": steady, "cpus": ray.cluster_resources().get("CPU"),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
