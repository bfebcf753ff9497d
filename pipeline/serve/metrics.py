"""Request metrics of the online endpoint through `ray.util.metrics` (Ray dashboard / Prometheus).

Request count and errors by HTTP status, choices in flight (queue length), time to first token and time
per output token. Outside a Ray worker (tests, plain uvicorn) every call is a no-op, as pipeline/metrics.py.
"""

from __future__ import annotations


class ServeMetrics:
    def __init__(self) -> None:
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                raise RuntimeError("not in a Ray worker")
            self.requests = metrics.Counter("vlmcap_serve_requests", "HTTP requests answered", tag_keys=("status",))
            self.errors = metrics.Counter("vlmcap_serve_errors", "requests answered with an error",
                                          tag_keys=("status",))
            self.tokens = metrics.Counter("vlmcap_serve_generated_tokens", "tokens generated")
            self.in_flight = metrics.Gauge("vlmcap_serve_pending", "choices admitted and not finished")
            self.ttft = metrics.Histogram("vlmcap_serve_ttft_seconds", "time to first token",
                                          boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30])
            self.tpot = metrics.Histogram("vlmcap_serve_tpot_seconds", "time per output token after the first",
                                          boundaries=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
        except Exception:  # noqa: BLE001 - not inside Ray
            self.requests = None

    def pending(self, n: int) -> None:
        if self.requests is not None:
            self.in_flight.set(n)

    def request(self, status: int, generated: int, seconds: float, first_token_s: float | None) -> None:
        if self.requests is None:
            return
        tags = {"status": str(status)}
        self.requests.inc(1, tags)
        if status >= 400:
            self.errors.inc(1, tags)
        if generated:
            self.tokens.inc(generated)
        if first_token_s is not None:
            self.ttft.observe(first_token_s)
            if generated > 1:
                self.tpot.observe((seconds - first_token_s) / (generated - 1))
