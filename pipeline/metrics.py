"""Ray metrics (dashboard / Prometheus) for the pipeline stages; silently absent outside a Ray worker."""

from __future__ import annotations


class StageMetrics:
    def __init__(self, stage: str):
        self.stage = stage
        try:
            from ray.util import metrics

            tags = ("stage",)
            self.rows = metrics.Counter("vlmcap_rows", "rows processed", tag_keys=tags)
            self.errors = metrics.Counter("vlmcap_error_rows", "rows that became error rows", tag_keys=tags)
            self.tokens = metrics.Counter("vlmcap_generated_tokens", "tokens generated", tag_keys=tags)
            self.latency = metrics.Histogram("vlmcap_batch_seconds", "seconds per Ray batch",
                                             boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120], tag_keys=tags)
        except Exception:  # noqa: BLE001 - not inside Ray (unit tests, plain scripts)
            self.rows = None

    def record(self, rows: int, errors: int, seconds: float, tokens: int = 0) -> None:
        if self.rows is None:
            return
        tags = {"stage": self.stage}
        self.rows.inc(rows, tags)
        if errors:
            self.errors.inc(errors, tags)
        if tokens:
            self.tokens.inc(tokens, tags)
        self.latency.observe(seconds, tags)
