"""pipeline/engine/builder.py: KV slots on the CPU stay within `cpu_kv_cache_gb` (the GPU path sizes against
free memory; tests/gpu covers it); a CPU replica uses every CPU of its process."""

import pytest
import torch

from pipeline.engine.builder import plan_slots
from pipeline.engine.config import EngineConfig

CPU = torch.device("cpu")
MIB = 2**20


def test_cpu_kv_cache_stays_within_its_budget():
    cfg = EngineConfig(max_num_seqs=256, cpu_kv_cache_gb=1.0)
    assert plan_slots(1 * MIB, cfg, CPU) == 256  # 256 MiB: max_num_seqs binds
    assert plan_slots(30 * MIB, cfg, CPU) == 34  # the demo model's ~30 MiB slots: the budget binds
    with pytest.raises(RuntimeError, match="lower max_model_len"):
        plan_slots(2 * 2**30, cfg, CPU)
    with pytest.raises(ValueError, match="cpu_kv_cache_gb"):
        EngineConfig(cpu_kv_cache_gb=0)


def test_cpu_replicas_use_every_cpu(monkeypatch):
    """Ray starts an actor that reserves no CPU with OMP_NUM_THREADS=1; a CPU replica takes its process's CPUs
    back (or $VLMCAP_CPU_THREADS)."""
    import os

    import torch

    from pipeline.engine.builder import use_every_cpu

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.delenv("VLMCAP_CPU_THREADS", raising=False)
        assert use_every_cpu() == len(os.sched_getaffinity(0)) == torch.get_num_threads()
        monkeypatch.setenv("VLMCAP_CPU_THREADS", "1")
        assert use_every_cpu() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
