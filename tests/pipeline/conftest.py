"""Shared helpers for the pipeline tests that run jobs on a local Ray (CPU, tiny checkpoints).

- `local_ray`: one Ray session for a test module (opt in with `pytestmark = pytest.mark.usefixtures(...)`).
- `watched(fn, *args, timeout_s=240)`: runs `fn` on a thread and fails the test if it does not finish, so a
  hang (RELIABILITY.md: some Ray jobs hang forever) fails instead of blocking the suite.
- `engine_texts(config, rows)`: what the engine alone gives for rows, on the inputs the CPU stage prepares
  (the reference every end-to-end text is compared with).
"""

from __future__ import annotations

import threading

import pytest
import ray

from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.media_codec import codec_for


@pytest.fixture(scope="module")
def local_ray():
    # address="local": always a cluster of our own, never one some other process `ray start`ed on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def run_watched(fn, *args, timeout_s: float = 240):
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"did not finish within {timeout_s}s (hang)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def texts_from_engine(config: JobConfig, rows: list[dict]) -> dict[str, str]:
    codec = codec_for(config.model, config)
    engine = build_engine(config.model, EngineConfig(max_num_seqs=config.max_num_seqs,
                                                     max_model_len=config.max_model_len, dtype="float32",
                                                     cuda_graphs=False), device="cpu")
    params = SamplingParams(max_new_tokens=config.max_new_tokens)
    requests = []
    for row in rows:
        ids, blob = codec.prepare(row)
        requests.append(Request(row["id"], ids, codec.unpack({"media": [blob]}, 0), params))
    return {c.request_id: c.text for c in engine.generate(requests)}


@pytest.fixture
def watched():
    return run_watched


@pytest.fixture
def engine_texts():
    return texts_from_engine
