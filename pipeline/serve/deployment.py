"""The Ray Serve deployment: each replica loads the model once, runs one engine thread, and serves the FastAPI
app of app.py as its HTTP ingress (our own ingress, not `ray.serve.llm`, which can only run vLLM).

Contract: `build_application(config, replicas=1, max_replicas=None)` returns a bound Serve application.
A replica reserves `tp` GPUs when the cluster has GPUs (none on a CPU-only cluster, so CI runs it); it is
ready only after its constructor returned (weights loaded, graphs captured), so Serve sends it no traffic
before. `max_replicas` above `replicas` turns on Serve's autoscaling between the two on ongoing requests.
Serve's own per-replica concurrency cap is set above our admission bound, so an overloaded replica answers
429 itself instead of requests piling up unseen in Serve's queues. Shutdown drains in-flight requests for
up to `graceful_shutdown_timeout_s`.
"""

from __future__ import annotations

from ray import serve

from pipeline.serve.app import build_app
from pipeline.serve.service import ChatService, ServeConfig


@serve.deployment
@serve.ingress()
class VlmcapServer:
    def __init__(self, config: ServeConfig):
        self.service = ChatService(config)

    def __serve_build_asgi_app__(self):
        return build_app(self.service, api_key=self.service.config.api_key)

    def check_health(self) -> None:
        """Serve's periodic probe: a dead engine thread makes Serve replace this replica."""
        if not self.service.healthy():
            raise RuntimeError("the engine thread is not running")


def _gpus_in_cluster() -> bool:
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch  # not connected yet: judge by this machine

    return torch.cuda.is_available()


def build_application(config: ServeConfig, replicas: int = 1, max_replicas: int | None = None,
                      drain_s: float = 60.0) -> serve.Application:
    gpus = config.tp if _gpus_in_cluster() else 0
    # Our admission bound per replica (2 x slots by default) + headroom for /health and /v1/models.
    ongoing = (config.max_pending or 2 * config.max_num_seqs) + 16
    options: dict = dict(ray_actor_options={"num_gpus": gpus, "num_cpus": 1}, max_ongoing_requests=ongoing,
                         graceful_shutdown_timeout_s=drain_s, health_check_period_s=10)
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": max(1, ongoing // 2)}
    else:
        options["num_replicas"] = replicas
    return VlmcapServer.options(**options).bind(config)
