"""One JSON line per engine step, to see where an engine's time goes in place (in a Serve replica, in the
batch job's GPU stage, in a benchmark's offline run) and compare the places step by step.

    python jobs/serve.py --model DIR --step-trace /tmp/trace          # one steps-<pid>.jsonl per engine
    python -m pipeline.engine.step_trace /tmp/trace/steps-*.jsonl      # a summary per file

`StepTrace(dir)` opens `dir/steps-<pid>.jsonl` (two replicas of a node write two files) and `record` writes
one line per step that did something: its start (`t`, seconds since the first recorded step), the requests
admitted (`admit`) and the admission phase's wall time (`prefill_ms`: the prefill, or a staged slice of
vision encoding with `admit` 0; pipeline/engine/staging.py), the decode width (`width`: the captured batch
bucket, 0: no decode) and its wall time (`decode_ms`), and the queue behind it (`waiting`, `running` after the
step). Times are host wall-clock; each step ends in a host sync, so they cover its GPU work (a staged slice is
not synced on its own: its GPU time shows in the same step's `decode_ms`). Lines are buffered and flushed
every `flush_every` records and whenever the engine goes idle, so tracing costs a few microseconds a step.

`summarize(lines)` answers the questions the endpoint's benchmarks keep asking: what an admission of n
requests costs here (p50 per n), what a decode step of each width costs, how long running sequences waited
between decode steps (p50/p99/max), and the share of the wall clock spent in prefill, decode and neither
(the engine idle or waiting on its caller).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import IO


class StepTrace:
    def __init__(self, directory: str | Path, flush_every: int = 256):
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / f"steps-{os.getpid()}.jsonl"
        self.file: IO[str] = self.path.open("a", encoding="utf-8")
        self.t0: float | None = None  # the first recorded step's start, on the engine timer's clock
        self.flush_every = flush_every
        self.unflushed = 0

    def record(self, start: float, admit: int, prefill_s: float, width: int, decode_s: float, waiting: int,
               running: int) -> None:
        if not admit and not width:
            return
        if self.t0 is None:
            self.t0 = start
        line = {"t": round(start - self.t0, 6), "admit": admit, "prefill_ms": round(prefill_s * 1e3, 3),
                "width": width, "decode_ms": round(decode_s * 1e3, 3), "waiting": waiting, "running": running}
        self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.unflushed += 1
        if self.unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.unflushed:
            self.file.flush()
            self.unflushed = 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(lines: list[dict]) -> dict:
    """Per-size admission and per-width decode costs (p50 ms), decode gaps and the wall clock's split."""
    if not lines:
        return {"steps": 0}
    admissions: dict[int, list[float]] = defaultdict(list)
    decodes: dict[int, list[float]] = defaultdict(list)
    gaps: list[float] = []
    last_decode: float | None = None
    for step in lines:
        if step["admit"]:
            admissions[step["admit"]].append(step["prefill_ms"])
        if step["width"]:
            start = step["t"] + step["prefill_ms"] / 1e3
            if last_decode is not None:
                gaps.append((start - last_decode) * 1e3)
            last_decode = start
            decodes[step["width"]].append(step["decode_ms"])
        if not step["running"]:
            last_decode = None  # nothing runs: the next decode starts a new series
    end = lines[-1]
    wall_ms = max(1e-6, (end["t"] - lines[0]["t"]) * 1e3 + end["prefill_ms"] + end["decode_ms"])
    prefill_ms = sum(s["prefill_ms"] for s in lines)
    decode_ms = sum(s["decode_ms"] for s in lines)
    return {
        "steps": len(lines), "wall_s": round(wall_ms / 1e3, 3),
        "share": {"prefill": round(prefill_ms / wall_ms, 3), "decode": round(decode_ms / wall_ms, 3),
                  "neither": round(max(0.0, 1 - (prefill_ms + decode_ms) / wall_ms), 3)},
        "admissions": {n: {"count": len(v), "p50_ms": round(_pct(v, 0.5), 1)} for n, v in sorted(admissions.items())},
        "decode": {w: {"count": len(v), "p50_ms": round(_pct(v, 0.5), 2)} for w, v in sorted(decodes.items())},
        "gap_ms": {"p50": round(_pct(gaps, 0.5), 1), "p99": round(_pct(gaps, 0.99), 1),
                   "max": round(max(gaps), 1)} if gaps else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.engine.step_trace", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="steps-<pid>.jsonl files")
    for path in ap.parse_args(argv).files:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        print(f"{path}: {json.dumps(summarize(lines))}")


if __name__ == "__main__":
    main()
