"""Can the vision tower run on a second CUDA stream while running sequences decode? (issue 16, criterion 3)

    python scripts/vision_overlap_probe.py --model-dir $VLMCAP_SHARED_CHECKPOINTS/Llama-3.2-11B-Vision-Instruct \
        --random-weights --image-size 1120 --images 16 --widths 64,256        # GPU

Times, on one engine: the vision tower alone for `--images` requests (one `_encode_batch`), the graphed decode
step alone at each width, then both at once: the images encoded on a side stream (in chunks of `--chunks`
images) while the decode step replays on another stream, one step after the other with a host sync per step
(as the engine does), until the vision is done. Per (width, chunk, priorities): the vision's wall time, the decode
steps done meanwhile and their p50/max, and the overlap's gain: (vision alone + steps x step alone) / wall.
Then profiles: the vision tower's kernels, a whole admission (`--profile-prefill N`), and one eager decode step
at width 1 (kernel time vs the graphed step). `--skip-overlap` only profiles (any model).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from prefill_cost import profile_table, sync, timed  # noqa: E402

from jobs.bench import bench_dir, synthetic_images  # noqa: E402
from pipeline.context_len import resolve_max_model_len  # noqa: E402
from pipeline.engine.builder import build_engine  # noqa: E402
from pipeline.engine.config import EngineConfig  # noqa: E402
from pipeline.job_config import JobConfig  # noqa: E402
from pipeline.media_codec import codec_for  # noqa: E402


def overlapped(engine, media: list, width: int, chunk: int, high_priority_decode: bool) -> dict:
    runner = engine.runner
    vision = torch.cuda.Stream(priority=0)
    decode = torch.cuda.Stream(priority=-1 if high_priority_decode else 0)
    sync()
    done = torch.cuda.Event()
    t0 = time.perf_counter()
    with torch.cuda.stream(vision):
        states = [runner._encode_batch(media[i: i + chunk]) for i in range(0, len(media), chunk)]
        done.record()
    launched = time.perf_counter() - t0
    steps = []
    with torch.cuda.stream(decode):
        while not done.query():
            s = time.perf_counter()
            engine.decode(width)[:1, :1].sum().item()  # the engine reads its tokens back every step
            steps.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    del states
    sync()
    return {"width": width, "chunk": chunk, "decode_high_priority": high_priority_decode,
            "launch_ms": round(launched * 1e3, 1), "wall_ms": round(wall * 1e3, 1), "steps": len(steps),
            "step_p50_ms": round(statistics.median(steps) * 1e3, 2) if steps else None,
            "step_max_ms": round(max(steps) * 1e3, 2) if steps else None}


def synthetic_requests(ckpt: Path, n: int, size: int) -> list[tuple[list[int], object]]:
    """`n` (prompt ids, media) as the batch job prepares them (jobs/bench.py's synthetic PNGs)."""
    codec = codec_for(ckpt, JobConfig(model=str(ckpt), input="-", output="-", prompt="Describe this image."))
    out = []
    for img in synthetic_images(n, size):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        ids, blob = codec.prepare({"image": buf.getvalue()})
        out.append((ids, codec.unpack({"media": [blob]}, 0)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--image-size", type=int, default=1120)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--widths", default="64,256")
    ap.add_argument("--chunks", default="16,4", help="images per vision call on the side stream")
    ap.add_argument("--skip-overlap", action="store_true")
    ap.add_argument("--profile-prefill", type=int, default=0, help="also time and profile `runner.prefill` of "
                    "this many requests (their images at --image-size)")
    ap.add_argument("--profile-rows", type=int, default=22)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a GPU")
    widths = [int(w) for w in args.widths.split(",")]
    ckpt = bench_dir(Path(args.model_dir))  # the 7B/72B metadata dirs borrow tokenizer files from a sibling
    job = resolve_max_model_len(JobConfig(model=str(ckpt), input="-", output="-", prompt=None,
                                          messages_column="messages", max_new_tokens=64, max_num_seqs=max(widths)))
    slots = max(*widths, args.profile_prefill)
    cfg = EngineConfig(max_num_seqs=slots, max_model_len=job.max_model_len, dtype="bfloat16")
    engine = build_engine(ckpt, cfg, random_weights=args.random_weights)
    runner = engine.runner
    runner.positions.fill_(64)
    out: dict = {"model": args.model_dir, "slots": runner.num_slots, "device": torch.cuda.get_device_name()}
    with torch.inference_mode():
        out["decode_alone_ms"] = {w: round(statistics.median(timed(lambda w=w: engine.decode(w), 20)) * 1e3, 2)
                                  for w in [1, *widths] if w <= runner.num_slots}
        print(f"[overlap] decode step alone (graphed), ms by width: {out['decode_alone_ms']}", flush=True)
        media = None
        if hasattr(runner, "_encode_batch") and not args.skip_overlap:
            media = [m for _, m in synthetic_requests(ckpt, args.images, args.image_size)]
            out["vision_alone_ms"] = round(statistics.median(timed(lambda: runner._encode_batch(media), 3)) * 1e3, 1)
            print(f"[overlap] vision alone, {args.images} images: {out['vision_alone_ms']} ms", flush=True)
            out["overlap"] = []
            for w in widths:
                for chunk in (int(c) for c in args.chunks.split(",")):
                    for hp in (True, False):
                        r = overlapped(engine, media, w, chunk, hp)
                        alone = out["decode_alone_ms"][w]
                        r["gain"] = round((out["vision_alone_ms"] + r["steps"] * alone) / r["wall_ms"], 2)
                        out["overlap"].append(r)
                        print(f"[overlap] {r}", flush=True)
            print(f"[overlap] profile of the vision tower ({args.images} images):\n"
                  f"{profile_table(lambda: runner._encode_batch(media), args.profile_rows)}", flush=True)
        if args.profile_prefill:
            reqs = synthetic_requests(ckpt, args.profile_prefill, args.image_size)
            n = len(reqs)

            def prefill():
                return runner.prefill([ids for ids, _ in reqs], [m for _, m in reqs], list(range(n)))

            out["prefill_ms"] = round(statistics.median(timed(prefill, 3)) * 1e3, 1)
            print(f"[overlap] prefill of {n} requests: {out['prefill_ms']} ms; profile:\n"
                  f"{profile_table(prefill, args.profile_rows)}", flush=True)
        print(f"[overlap] profile of one eager decode step at width 1:\n"
              f"{profile_table(lambda: runner.decode(1), args.profile_rows)}", flush=True)
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
