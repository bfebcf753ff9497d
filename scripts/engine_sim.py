"""The real engine's scheduling (admission sizing, stall budget, staged vision) over a cost model on a simulated
clock: a flood of one-image requests, no GPU, no sleeping (256 requests simulate in ~1 s on a CPU).

    python scripts/engine_sim.py                                      # defaults: Mllama-11B 1120^2 on an H200
    python scripts/engine_sim.py --max-decode-stall-ms 130 --stage-vision-images 2 --requests 1024

Costs (GPU time per call, host time ignored): encode = --staged-vision-ms (default --vision-ms); prefill = --fixed-ms +
--text-ms per request (+ their vision unless staged); decode step = --decode-ms + --decode-ms-per-seq x width.
The defaults reproduce the default engine on an H200 (simulated 16.3 images/s, measured 15.6; session 12,
BENCHMARKS.md). Prints images/s, the gaps between decode steps and the admissions, as jobs/bench.py does.
Session 12: `--max-decode-stall-ms 130 --stage-vision-images 2` simulates 15.1 images/s with a p99 gap of 142
ms where the H200 measured 11.4 and 136 ms: what the model leaves out (batch-1 vision calls, host time) costs
the rest, and the raw step trace of that run is the way to find it.
Session 15: staged slices are sized by the measured encode time; with the endpoint's defaults
(`--max-decode-stall-ms 150 --stage-vision-images 4`, 1,024 requests) the worst gap went 202 -> 162 ms
(16.0 -> 15.9 images/s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.sampling import SamplingParams  # noqa: E402
from pipeline.engine.config import EngineConfig  # noqa: E402
from pipeline.engine.engine import Engine  # noqa: E402
from pipeline.engine.request import Request  # noqa: E402
from pipeline.engine.step_timer import StepTimer  # noqa: E402


class SimClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class CostRunner:
    """A runner whose calls advance the simulated clock by their modelled cost; every logit picks token 3."""

    def __init__(self, clock: SimClock, slots: int, a: argparse.Namespace):
        self.clock, self.a = clock, a
        self.num_slots, self.max_len, self.device = slots, 1 << 16, torch.device("cpu")
        self.tokens = torch.zeros(slots, dtype=torch.long)
        self.positions = torch.zeros(slots, dtype=torch.long)

    def check(self, prompt_ids, media) -> None:
        return None

    @staticmethod
    def media_images(media) -> int:
        return 1

    def encode(self, media) -> torch.Tensor:
        self.clock.t += (self.a.staged_vision_ms or self.a.vision_ms) / 1e3
        return torch.zeros(1, 1)

    def prefill(self, prompts, media, slots, encoded=None) -> torch.Tensor:
        images = 0 if encoded is not None else sum(m is not None for m in media)
        self.clock.t += (self.a.fixed_ms + self.a.text_ms * len(prompts) + self.a.vision_ms * images) / 1e3
        return torch.nn.functional.one_hot(torch.full((len(prompts),), 3), 8).float()

    def decode(self, batch: int) -> torch.Tensor:
        self.clock.t += (self.a.decode_ms + self.a.decode_ms_per_seq * batch) / 1e3
        return torch.nn.functional.one_hot(torch.full((batch,), 3), 8).float()


def simulate(a: argparse.Namespace) -> dict:
    clock = SimClock()
    cfg = EngineConfig(max_num_seqs=a.slots, max_prefill_requests=a.max_prefill_requests, cuda_graphs=False,
                       max_decode_stall_ms=a.max_decode_stall_ms, stage_vision_images=a.stage_vision_images)
    engine = Engine(CostRunner(clock, a.slots, a), None, cfg, ())
    engine.timer, engine.staged_costs = StepTimer(window=10**7, clock=clock), StepTimer(clock=clock)
    if engine.staging is not None:
        engine.staging.clock = clock
    params = SamplingParams(max_new_tokens=a.new_tokens, ignore_eos=True)
    image = object()  # any non-None media: one image
    done = list(engine.generate(Request(str(i), [1, 2, 3], image, params) for i in range(a.requests)))
    assert len(done) == a.requests and all(c.error is None for c in done)
    p50, p99, worst = engine.timer.gaps_ms() or (0.0, 0.0, 0.0)
    s = engine.stats
    return {"images_per_s": round(a.requests / clock.t, 2), "simulated_s": round(clock.t, 1),
            "gap_p50_ms": round(p50, 1), "gap_p99_ms": round(p99, 1), "gap_max_ms": round(worst, 1),
            "admissions": s["admissions"], "mean_admitted": round(s["admitted"] / max(1, s["admissions"]), 1),
            "decode_steps": s["decode_steps"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--max-prefill-requests", type=int, default=16)
    ap.add_argument("--max-decode-stall-ms", type=float)
    ap.add_argument("--stage-vision-images", type=int, default=0)
    ap.add_argument("--vision-ms", type=float, default=46.0, help="one 4-tile image through the vision tower")
    ap.add_argument("--staged-vision-ms", type=float, help="the same image encoded alone (staging encodes one "
                    "request per call; default --vision-ms)")
    ap.add_argument("--fixed-ms", type=float, default=25.0)
    ap.add_argument("--text-ms", type=float, default=8.0, help="per request: text prefill + cross-attention K/V")
    ap.add_argument("--decode-ms", type=float, default=7.0)
    ap.add_argument("--decode-ms-per-seq", type=float, default=0.05)
    result = simulate(ap.parse_args(argv))
    print(result)
    return result


if __name__ == "__main__":
    main()
