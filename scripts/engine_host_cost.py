"""The engine's own host time per decode step, without a model: what every GPU step pays on top of its kernels.

    python scripts/engine_host_cost.py                 # widths 1, 64, 256
    python scripts/engine_host_cost.py --profile       # and the top functions (cProfile) per width
    python scripts/engine_host_cost.py --streaming     # as the endpoint's engine thread: tokens to an event loop

Every engine step ends in a host sync (the sampled tokens go to `.tolist()`), so the Python that builds the
step's inputs and takes its tokens is serial with the GPU's work: at batch 1 it adds to the decode step the
issue measures, at 256 running sequences it is a share of every token. The runner here answers instantly
(fixed logits over a 363-token vocabulary on the CPU), so the time per `step()` is the engine's alone:
scheduling, input buffers, sampling's Python, appending tokens. Greedy, nothing finishes, nothing is admitted.
`--streaming` wraps the engine as a Serve replica does (pipeline/serve/stream_engine.py) with every sequence
streaming to an asyncio event loop that runs in another thread of this process and queues the tokens, as the
replica's loop does before it writes SSE chunks: the time then includes that loop's share of the GIL.

Measured 2026-12-01 on the 2-core CPU machine (us per step at widths 1 / 64 / 256): item-by-item input tensors
(before) 29 / 321 / 1,101; lists then one tensor each 26 / 114 / 290. Streaming at 64 / 256, one
`call_soon_threadsafe` per stream and step (before, uvloop): 375 / 1,241; one per event loop and step: 266-291 /
871 (uvloop), 277 / 882 (asyncio's loop, as here).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.sampling import SamplingParams  # noqa: E402
from pipeline.engine.config import EngineConfig  # noqa: E402
from pipeline.engine.engine import Engine  # noqa: E402
from pipeline.engine.request import Request  # noqa: E402
from pipeline.serve.stream_engine import ServeRequest, StreamingEngine  # noqa: E402

VOCAB = 363


class InstantRunner:
    """The runner interface (pipeline/engine/runners) with no model: every call returns fixed logits."""

    def __init__(self, slots: int):
        self.num_slots, self.max_len, self.device = slots, 1 << 20, torch.device("cpu")
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)
        self.logits = torch.nn.functional.one_hot(torch.full((slots,), 5), VOCAB).float()

    def check(self, prompt_ids, media) -> None:
        return None

    def prefill(self, prompts, media, slots) -> torch.Tensor:
        return self.logits[: len(prompts)]

    def decode(self, batch: int) -> torch.Tensor:
        return self.logits[:batch]


def running_engine(width: int, steps: int, loop: asyncio.AbstractEventLoop | None = None) -> Engine | StreamingEngine:
    engine = Engine(InstantRunner(width), None, EngineConfig(max_num_seqs=width, cuda_graphs=False), ())
    if loop is not None:
        engine, inbox = StreamingEngine(engine), asyncio.Queue()
    params = SamplingParams(max_new_tokens=steps + 16, ignore_eos=True)
    for i in range(width):
        if loop is None:
            engine.add(Request(str(i), [1, 2, 3], None, params))
        else:
            r = ServeRequest(str(i), [1, 2, 3], None, params)
            r.loop, r.on_tokens = loop, (lambda ids, i=i: inbox.put_nowait((i, ids)))
            engine.add(r)
    engine.step()  # admits all; every later step is one decode step of `width` sequences
    return engine


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1,64,256")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--streaming", action="store_true")
    args = ap.parse_args(argv)
    loop = None
    if args.streaming:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    for width in (int(w) for w in args.widths.split(",")):
        engine = running_engine(width, 2 * args.steps, loop)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        us = 1e6 * (time.perf_counter() - t0) / args.steps
        kind = "streaming " if loop is not None else ""
        print(f"[engine_host_cost] width {width}: {us:.0f} us of host time per {kind}decode step", flush=True)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(lambda e=engine: [e.step() for _ in range(args.steps // 4)])
            pstats.Stats(prof).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
