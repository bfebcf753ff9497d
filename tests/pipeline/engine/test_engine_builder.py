"""pipeline/engine/builder.py: KV slots on the CPU stay within `cpu_kv_cache_gb` (the GPU path sizes against
free memory; tests/gpu covers it)."""

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
