"""Where one admission's time goes: the engine's prefill cost as `fixed + per_request * n`, and a profile.

    python scripts/prefill_cost.py --model-dir $VLMCAP_SHARED_CHECKPOINTS/Llama-3.2-11B-Vision-Instruct \
        --random-weights --image-size 560 --sizes 1,2,4,8,16,32            # GPU
    python scripts/prefill_cost.py --model-dir demo/model --image-size 64 --sizes 1,2 --reps 1   # CPU smoke

Requests are what the online endpoint builds (scripts/serve_bench.py's bodies: one JPEG + one question, through
the server's parser and codec). For each batch size n: `runner.prefill` of n requests into slots 0..n-1,
synchronised, best and median of `--reps` after one warm-up; then a least-squares line through the medians
(the scheduler's cost model under `max_decode_stall_ms`, pipeline/engine/step_timer.py), the graphed decode
step at a few widths, and a torch.profiler table of the smallest and largest prefill (host time vs kernel
time: is the step launch-bound?). Prints a JSON summary last (`--json` writes it too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from pipeline.context_len import resolve_max_model_len  # noqa: E402
from pipeline.engine.builder import build_engine  # noqa: E402
from pipeline.engine.config import EngineConfig  # noqa: E402
from pipeline.engine.step_timer import line_fit  # noqa: E402
from pipeline.job_config import JobConfig  # noqa: E402
from pipeline.media_codec import codec_for  # noqa: E402


def prepared_requests(model_dir: str, n: int, image_size: int, job: JobConfig) -> list[tuple[list[int], object]]:
    # the endpoint's parser needs pydantic (Ray Serve's), which a bare GPU machine lacks: imported here
    from serve_bench import make_bodies

    from pipeline.serve.messages import MediaLimits, split_media
    from pipeline.serve.schemas import parse_request

    codec = codec_for(model_dir, job)
    limits = MediaLimits(max_images=codec.max_images_per_request)
    out = []
    for body in make_bodies("m", n, image_size, 16):
        req = parse_request(json.dumps(body).encode(), 8)
        messages, images, _ = split_media(req.messages, limits)
        ids, blob = codec.prepare({"messages": messages, "image": images, "video": None})
        out.append((ids, codec.unpack({"media": [blob]}, 0)))
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> list[float]:
    fn()  # warm-up: allocator, cuDNN plans, lazy inits
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def profile_table(fn, rows: int) -> str:
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                    if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        sync()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    avg = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in avg) if torch.cuda.is_available() else 0.0
    head = f"kernel time {gpu_us / 1e3:.1f} ms; host time (CPU total of the top-level ops) follows\n"
    return head + avg.table(sort_by=key, row_limit=rows) + avg.table(sort_by="cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--image-size", type=int, default=560)
    ap.add_argument("--sizes", default="1,2,4,8,16,32", help="prefill batch sizes")
    ap.add_argument("--widths", default="1,16,64", help="decode widths to time")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile-rows", type=int, default=18)
    ap.add_argument("--sdpa-first", choices=("flash", "cudnn", "efficient"),
                    help="try this SDPA backend first (the others stay as fallbacks)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.sdpa_first:
        first = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION}[args.sdpa_first]
        order = [first] + [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                                       SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
        with sdpa_kernel(order, set_priority=True):
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    cuda = torch.cuda.is_available()
    job = resolve_max_model_len(JobConfig(model=args.model_dir, input="-", output="-", prompt=None,
                                          messages_column="messages", max_new_tokens=64, max_num_seqs=max(sizes)))
    reqs = prepared_requests(args.model_dir, max(sizes), args.image_size, job)
    cfg = EngineConfig(max_num_seqs=max(max(sizes), *map(int, args.widths.split(","))),
                       max_model_len=job.max_model_len,
                       dtype="bfloat16" if cuda else "float32")
    engine = build_engine(Path(args.model_dir), cfg, random_weights=args.random_weights)
    runner = engine.runner
    print(f"[prefill_cost] {args.model_dir}: {runner.num_slots} slots, prompt {len(reqs[0][0])} tokens, "
          f"{args.image_size}px image, device {torch.cuda.get_device_name() if cuda else 'cpu'}", flush=True)

    def prefill(n: int):
        return lambda: runner.prefill([ids for ids, _ in reqs[:n]], [m for _, m in reqs[:n]], list(range(n)))

    rows = []
    for n in sizes:
        ts = timed(prefill(n), args.reps)
        med = statistics.median(ts)
        rows.append({"n": n, "median_ms": round(med * 1e3, 2), "best_ms": round(min(ts) * 1e3, 2),
                     "per_request_ms": round(med * 1e3 / n, 2)})
        print(f"[prefill_cost] prefill n={n}: median {med * 1e3:.1f} ms, {med * 1e3 / n:.1f} ms/request", flush=True)
    fixed, per = line_fit([r["n"] for r in rows], [r["median_ms"] for r in rows])
    print(f"[prefill_cost] fit: {fixed:.1f} ms + {per:.1f} ms x n", flush=True)
    decode = {}
    for w in (int(x) for x in args.widths.split(",")):
        if w <= runner.num_slots:
            decode[w] = round(statistics.median(timed(lambda w=w: engine.decode(w), max(args.reps, 5))) * 1e3, 2)
    print(f"[prefill_cost] decode step ms by width: {decode}", flush=True)
    for n in sorted({sizes[0], sizes[-1]}):
        print(f"[prefill_cost] profile of prefill n={n}:\n{profile_table(prefill(n), args.profile_rows)}", flush=True)
    summary = {"model": args.model_dir, "image_size": args.image_size, "sdpa_first": args.sdpa_first,
               "prompt_tokens": len(reqs[0][0]),
               "prefill": rows, "fixed_ms": round(fixed, 2), "per_request_ms": round(per, 2), "decode_ms": decode,
               "device": torch.cuda.get_device_name() if cuda else "cpu"}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
