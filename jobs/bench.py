"""Engine benchmark at real model shapes with random weights, against HF transformers in the same run.

    python jobs/bench.py --model mllama-11b --images 256 --image-size 1120 --new-tokens 64
    python jobs/bench.py --model onevision-7b --images 128 --image-size 768 --new-tokens 64
    python jobs/bench.py --model mllama-90b --tp 2 --images 128 --skip-hf     # one replica over 2 GPUs (NCCL)

Weights are random (bf16) at the shapes of the real `config.json` in ../shared/checkpoints (or
--config DIR); gates are set non-zero so images matter. Every sequence generates exactly --new-tokens
tokens (EOS ignored). The same synthetic images and prompt go through our engine and through
transformers' `generate()` (batch --hf-batch, on the first --hf-images images). Prints one markdown
table: images/s, output tokens/s, batch-1 decode step, peak GPU memory, and our ratio to HF.
With --tp N the engine drives a tensor-parallel replica of N ranks (GPUs 0..N-1), each filling only its
own random shard, so 90B/72B run from config.json alone; peak memory is rank 0's; HF is not run.
--arrival-rate R then feeds requests as a Poisson process and reports the gaps between decode steps, overall
and at a steady state (issue 16, criterion 3: ~256 running needs longer answers than the batch run's), e.g.
    python jobs/bench.py --skip-hf --small-images 0 --arrival-rate 14 --arrival-requests 1024 --arrival-new-tokens 256
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.random_weights import random_model  # noqa: E402
from models.registry import architecture, model_class  # noqa: E402
from ops.sampling import SamplingParams  # noqa: E402
from pipeline.engine.builder import make_runner  # noqa: E402
from pipeline.engine.config import EngineConfig  # noqa: E402
from pipeline.engine.engine import Engine  # noqa: E402
from pipeline.engine.request import Request  # noqa: E402
from pipeline.engine.tp_engine import build_tp_engine  # noqa: E402
from pipeline.job_config import JobConfig  # noqa: E402
from pipeline.media_codec import codec_for  # noqa: E402

SHARED = Path(os.environ.get("VLMCAP_SHARED_CHECKPOINTS",
                             Path(__file__).resolve().parents[2] / "shared" / "checkpoints"))
PRESETS = {
    "mllama-11b": "Llama-3.2-11B-Vision-Instruct",
    "mllama-90b": "Llama-3.2-90B-Vision-Instruct",
    "onevision-0.5b": "llava-onevision-qwen2-0.5b-ov-hf",
    "onevision-7b": "llava-onevision-qwen2-7b-ov-hf",
    "onevision-72b": "llava-onevision-qwen2-72b-ov-hf",
}


def build_ours(ckpt: Path, dtype: torch.dtype):
    return random_model(model_class(architecture(ckpt)), ckpt, dtype, "cuda")


def bench_dir(ckpt: Path) -> Path:
    """The config dir, completed with tokenizer/processor files from a sibling of the same family when the
    real dir only has config.json + index (7B/72B): a temp dir, never written into ../shared."""
    if (ckpt / "tokenizer.json").exists() and (ckpt / "preprocessor_config.json").exists():
        return ckpt
    donor = next((d for d in (ckpt.parent / "llava-onevision-qwen2-0.5b-ov-hf",
                              ckpt.parent / "Llama-3.2-11B-Vision-Instruct")
                  if d.exists() and json.loads((d / "config.json").read_text())["architectures"]
                  == json.loads((ckpt / "config.json").read_text())["architectures"]), None)
    if donor is None:
        raise SystemExit(f"{ckpt} has no tokenizer/processor files and no sibling to borrow them from")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    for f in donor.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, tmp / f.name)
        elif f.is_dir():
            shutil.copytree(f, tmp / f.name)
    shutil.copy(ckpt / "config.json", tmp / "config.json")
    return tmp


def load_hf_peer():
    """transformers is a test-only oracle: its peer code lives in tests/peers/."""
    path = Path(__file__).resolve().parents[1] / "tests" / "peers" / "hf_generate.py"
    spec = importlib.util.spec_from_file_location("hf_generate_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_images(n: int, size: int, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Smooth random images (not pure noise) so JPEG-like statistics do not matter for the model path.
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def arrivals_run(engine: Engine, requests: list[Request], rate: float, seed: int = 0,
                 steady_running: int | None = None, clock=time.perf_counter, sleep=time.sleep) -> dict:
    """Requests arrive as a Poisson process of `rate`/s while the engine runs; the gaps between consecutive
    decode steps (what a running sequence waits per token, prefill stalls included) come from its StepTimer,
    each paired with how many sequences that step decoded. Gaps of the steady state (steps decoding at least
    `steady_running` sequences) are reported apart from the ramp up and the drain (issue 16, criterion 3)."""
    from pipeline.engine.step_timer import StepTimer

    arrive = np.random.default_rng(seed).exponential(1 / rate, len(requests)).cumsum()
    engine.timer = StepTimer(window=10**7, clock=clock)  # gaps of this run only, all of them
    widths: list[int] = []  # per decode step, aligned with engine.timer.gaps
    done, i, t0 = [], 0, clock()
    while len(done) < len(requests):
        now = clock() - t0
        while i < len(requests) and arrive[i] <= now:
            engine.add(requests[i])
            i += 1
        if engine.has_work():
            gaps_before = len(engine.timer.gaps)
            finished = engine.step()
            done += finished
            if len(engine.timer.gaps) > gaps_before:  # a decode step that continued running sequences
                widths.append(len(engine.scheduler.running) + sum(c.error is None for c in finished))
        else:
            sleep(max(0.0, arrive[i] - now))
    secs = clock() - t0
    gaps = np.array(engine.timer.gaps) * 1e3
    out = {"arrival_rate": rate, "requests": len(requests), "images_per_s": len(requests) / secs,
           "decode_steps": len(gaps) + 1, "running_p50": float(np.median(widths)) if widths else 0,
           "running_max": max(widths, default=0), **gap_stats(gaps)}
    if steady_running:
        steady = gaps[np.array(widths) >= steady_running] if widths else gaps[:0]
        out["steady"] = {"running_at_least": steady_running, "decode_steps": len(steady), **gap_stats(steady)}
    return out


def gap_stats(gaps_ms: np.ndarray) -> dict:
    if not len(gaps_ms):
        return {"gap_p50_ms": None, "gap_p99_ms": None, "gap_max_ms": None}
    return {"gap_p50_ms": float(np.percentile(gaps_ms, 50)), "gap_p99_ms": float(np.percentile(gaps_ms, 99)),
            "gap_max_ms": float(gaps_ms.max())}


def decode_step_ms(engine: Engine, reps: int = 50) -> float:
    engine.runner.tokens.zero_()
    engine.runner.positions.fill_(64)
    engine.decode(1)
    _, secs = timed(lambda: [engine.decode(1) for _ in range(reps)])
    return secs / reps * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(PRESETS), default="mllama-11b")
    ap.add_argument("--config", type=Path, help="checkpoint dir with config.json etc. (overrides --model)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--small-images", type=int, default=64, help="a second, short run: (images - small) / "
                    "(time - small time) is the marginal rate, comparable with jobs/bench_pipeline.py's")
    ap.add_argument("--image-size", type=int, default=1120)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-prefill-requests", type=int, default=16)
    ap.add_argument("--max-prefill-tokens", type=int, default=16384, help="token budget of one prefill batch")
    ap.add_argument("--hf-images", type=int, default=64)
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--tp", type=int, default=1, help="GPUs of one tensor-parallel replica (HF peer skipped)")
    ap.add_argument("--prompt", default="Describe this image in detail.")
    ap.add_argument("--max-decode-stall-ms", type=float, help="EngineConfig.max_decode_stall_ms (default: none)")
    ap.add_argument("--stage-vision-images", type=int, default=0, help="EngineConfig.stage_vision_images "
                    "(vision encoded this many images per step between decode steps; default 0: off)")
    ap.add_argument("--step-trace", help="directory: one JSON line per engine step (pipeline/engine/step_trace.py)")
    ap.add_argument("--arrival-rate", type=float, help="also run the images as Poisson arrivals at this rate "
                    "(images/s) and report the gaps between decode steps (p50/p99/max)")
    ap.add_argument("--arrival-requests", type=int, help="requests in the arrivals run (the images reused in "
                    "turn; default --images)")
    ap.add_argument("--arrival-new-tokens", type=int, help="tokens per arriving request (default --new-tokens); "
                    "a steady state of ~256 running needs rate x time in the engine ~= 256 (Little's law; an "
                    "estimate for Mllama-11B on an H200: 256 tokens at ~15/s)")
    ap.add_argument("--steady-running", type=int, help="also report the gaps of decode steps with at least this "
                    "many running sequences (default 90%% of the slots)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    ckpt = bench_dir(args.config or SHARED / PRESETS[args.model])
    job = JobConfig(model=str(ckpt), input="-", output="-", prompt=args.prompt)
    codec = codec_for(ckpt, job)
    images = synthetic_images(args.images, args.image_size)
    prompt_ids, media = [], []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        ids, blob = codec.prepare({"image": buf.getvalue()})
        prompt_ids.append(ids)
        media.append(codec.unpack({"media": [blob]}, 0))
    print(f"prompt tokens (incl. image tokens): {len(prompt_ids[0])}", flush=True)

    longest = len(max(prompt_ids, key=len)) + max(args.new_tokens, args.arrival_new_tokens or 0)
    cfg = EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=longest + 8,
                       max_prefill_requests=args.max_prefill_requests,
                       max_prefill_tokens=args.max_prefill_tokens, cuda_graphs=not args.no_cuda_graphs,
                       max_decode_stall_ms=args.max_decode_stall_ms, step_trace=args.step_trace,
                       stage_vision_images=args.stage_vision_images)
    torch.cuda.reset_peak_memory_stats()
    replica = None
    t0 = time.perf_counter()
    if args.tp > 1:  # every rank builds its random shard, sizes its KV, compiles and captures its graphs
        engine, replica = build_tp_engine(ckpt, args.tp, cfg, random_weights=True, tokenizer=codec.tokenizer)
        model = None
    else:
        model = build_ours(ckpt, torch.bfloat16)
        runner = make_runner(model, cfg, ckpt, torch.device("cuda"), codec.tokenizer.pad_id or 0)
        t0 = time.perf_counter()
        engine = Engine(runner, None, cfg, ())  # compiles the fused kernels and captures the CUDA graphs
    runner = engine.runner
    t_capture = time.perf_counter() - t0
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    warm = [Request(f"w{i}", prompt_ids[i], media[i], params) for i in range(min(4, args.images))]
    list(engine.generate(warm))
    requests = [Request(str(i), prompt_ids[i], media[i], params) for i in range(args.images)]
    done, secs = timed(functools.partial(list, engine.generate(requests)))
    assert len(done) == args.images and all(c.num_generated_tokens == args.new_tokens for c in done), \
        [c.error for c in done if c.error][:3]
    small = min(args.small_images, args.images // 2)  # the same ramp and drain, fewer rows in between
    _, small_secs = timed(functools.partial(list, engine.generate(requests[:small])))
    ours = {"images_per_s": args.images / secs, "tokens_per_s": args.images * args.new_tokens / secs,
            "marginal_images_per_s": (args.images - small) / (secs - small_secs),
            "decode_ms_b1": decode_step_ms(engine), "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "slots": runner.num_slots, "graph_capture_s": t_capture, "tp": args.tp}
    print(f"ours: {ours}", flush=True)
    if args.arrival_rate:
        tokens = SamplingParams(max_new_tokens=args.arrival_new_tokens or args.new_tokens, ignore_eos=True)
        n = len(requests)
        arriving = [Request(f"a{i}", prompt_ids[i % n], media[i % n], tokens)
                    for i in range(args.arrival_requests or n)]
        ours["arrivals"] = arrivals_run(engine, arriving, args.arrival_rate,
                                        steady_running=args.steady_running or int(0.9 * runner.num_slots))
        print(f"arrivals: {ours['arrivals']}", flush=True)
    if replica is not None:
        replica.shutdown()
    del engine, runner, model, replica
    gc.collect()
    torch.cuda.empty_cache()

    hf = None
    if not args.skip_hf and args.tp == 1:
        hf = load_hf_peer().run_hf(ckpt, images[: args.hf_images], args.hf_batch, args.new_tokens, args.prompt)
        print(f"hf: {hf}", flush=True)
    rows = [(f"ours (engine{f', tp={args.tp}' if args.tp > 1 else ''})", ours),
            (f"HF generate (batch {args.hf_batch})", hf)]
    print(f"\n{args.model}: {args.images} images {args.image_size}x{args.image_size}, {args.new_tokens} new tokens, "
          f"{torch.cuda.get_device_name()}\n")
    print("| | images/s | output tokens/s | batch-1 decode step (ms) | peak GPU mem (GiB) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        if r:
            print(f"| {name} | {r['images_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['decode_ms_b1']:.1f} | "
                  f"{r['peak_gib']:.1f} |")
    if hf:
        print(f"\nratio ours/HF: {ours['images_per_s'] / hf['images_per_s']:.2f}x images/s, "
              f"{hf['decode_ms_b1'] / ours['decode_ms_b1']:.1f}x faster batch-1 decode step")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "ours": ours, "hf": hf},
                                        indent=2))


if __name__ == "__main__":
    main()
