"""Driver-side progress: a line every few seconds that reads well in `ray job logs`, and the summary.

`update(table)` counts an output batch and prints the line when the interval has passed since the last
one, or when the job (total known) crosses another tenth of its rows: a small job's rows, which may all
arrive within a second after a long start-up, still show as 2/6, 4/6, ... instead of 0/6 then "done",
while a big job gets at most ten lines more than the interval gives. Inside `with progress.heartbeat():`
a background thread also prints the line when no batch has arrived for a while (Ray start-up, model
loading, a slow first batch), so the log never goes silent for longer than the interval.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter

import pyarrow as pa


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, total: int | None, interval_s: float = 5.0, out=sys.stdout):
        self.total, self.interval, self.out = total, interval_s, out
        self.start = self.last = time.monotonic()
        self.rows = self.tokens = self.errors = 0
        self.tenths = 0  # tenths of `total` done at the last line
        self.first: tuple[float, int] | None = None  # (time, rows) at the first batch
        self.finish = Counter()
        self.error_kinds = Counter()
        self.lock = threading.Lock()

    def update(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self.first is None:
            self.first = (time.monotonic(), self.rows)
        self.tokens += sum(x or 0 for x in table.column("num_generated_tokens").to_pylist())
        for reason, err in zip(table.column("finish_reason").to_pylist(), table.column("error").to_pylist(),
                               strict=True):
            self.finish[reason] += 1
            if err:
                self.errors += 1
                self.error_kinds[err.split(":", 1)[0]] += 1
        self._maybe_line()

    def _tenths(self) -> int:
        return 10 * self.rows // self.total if self.total else 0

    def _maybe_line(self) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.interval and self._tenths() <= self.tenths:
                return
            self.last, self.tenths = now, self._tenths()
        self.line()

    @contextlib.contextmanager
    def heartbeat(self):
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.interval / 2):
                self._maybe_line()

        thread = threading.Thread(target=beat, name="progress", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def line(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.rows / elapsed
        done = f"{self.rows}/{self.total} ({100 * self.rows / self.total:.1f}%)" if self.total else f"{self.rows}"
        eta = ""
        if self.total and self.first is not None and self.rows > self.first[1]:
            # The rate since the first batch: start-up and model loading say nothing about what is left.
            steady = (self.rows - self.first[1]) / max(time.monotonic() - self.first[0], 1e-9)
            eta = f" | ETA {_duration((self.total - self.rows) / steady)}"
        if not self.rows:  # Ray start-up, model loading: a rate of 0 says nothing
            print(f"[caption] {done} rows | waiting for the first rows ({_duration(elapsed)}: starting Ray "
                  "workers, loading the model, preprocessing)", file=self.out, flush=True)
            return
        print(f"[caption] {done} rows | {rate:.2f} rows/s | {self.tokens / elapsed:.0f} tok/s | "
              f"errors {self.errors}{eta}", file=self.out, flush=True)

    def summary(self, output: str, skipped: int) -> dict:
        elapsed = time.monotonic() - self.start
        info = {"rows_written": self.rows, "rows_skipped_resume": skipped, "elapsed_s": round(elapsed, 1),
                "rows_per_s": round(self.rows / max(elapsed, 1e-9), 3),
                "tokens_per_s": round(self.tokens / max(elapsed, 1e-9), 1),
                "finish_reasons": dict(self.finish), "error_types": dict(self.error_kinds), "output": output}
        print(f"[caption] done: {self.rows} rows in {_duration(elapsed)} ({info['rows_per_s']} rows/s, "
              f"{info['tokens_per_s']} tok/s); skipped (already written) {skipped}", file=self.out, flush=True)
        print(f"[caption] finish reasons: {dict(self.finish)}; errors by type: {dict(self.error_kinds) or 'none'}",
              file=self.out, flush=True)
        print(f"[caption] output: {output}", file=self.out, flush=True)
        return info
