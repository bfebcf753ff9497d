"""The GPU stage's Ray Data wiring (pipeline/builder.py `apply_generate_stage`), with a probe in place of
the model: each actor must run `batches_in_flight` calls at once, or its engine sees one Ray batch of
requests at a time and drains between batches (measured for Mllama-11B: 80-88% of the engine alone).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ray

from pipeline.builder import apply_generate_stage
from pipeline.job_config import JobConfig


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


class ConcurrencyProbe:
    """Every call waits until `batches_in_flight` calls are inside `__call__` at the same time; calls that
    were serialised would break the barrier (timeout) instead of passing it."""

    def __init__(self, config: JobConfig):
        self.barrier = threading.Barrier(config.batches_in_flight, timeout=60)
        self.calls, self.lock = 0, threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls += 1
            first_round = self.calls <= self.barrier.parties  # later calls may be a partial last round
        if first_round:
            self.barrier.wait()
        return {"id": batch["id"], "passed_barrier": np.full(len(batch["id"]), first_round)}


def test_each_actor_runs_batches_in_flight_calls_at_once(tmp_path):
    config = JobConfig(model="unused", input="unused", output=str(tmp_path), batch_size=4, batches_in_flight=3)
    ds = ray.data.range(48, override_num_blocks=12).map_batches(lambda b: {"id": b["id"].astype(str)})
    rows = apply_generate_stage(ds, ConcurrencyProbe, config, gpus=0).take_all()
    assert sorted(int(r["id"]) for r in rows) == list(range(48))
    assert sum(r["passed_barrier"] for r in rows) == 3 * 4  # 3 calls of 4 rows met at the barrier


def test_small_jobs_get_batches_for_every_call_in_flight():
    from pipeline.builder import fit_batch_size

    base = JobConfig(model="m", input="i", output="o", batch_size=64, batches_in_flight=8)
    assert fit_batch_size(base, 6).batch_size == 1  # 6 batches: rows come back (and commit) one by one
    assert fit_batch_size(base, 100).batch_size == 13
    assert fit_batch_size(JobConfig(**{**base.__dict__, "replicas": 2}), 100).batch_size == 7
    assert fit_batch_size(base, 10_000) is base and fit_batch_size(base, None) is base
    assert fit_batch_size(base, 0) is base
    # More (smaller) CPU-stage batches must not start more CPU actors than 8-row batches would have.
    assert fit_batch_size(base, 6).preprocess_actors == (1, 1)
    assert fit_batch_size(base, 100).preprocess_actors == (1, 8)
    assert fit_batch_size(JobConfig(**{**base.__dict__, "preprocess_actors": (2, 4)}), 6).preprocess_actors == (2, 2)
