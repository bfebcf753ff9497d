"""ops/gemv.py's Triton kernel against F.linear, run on the CPU by Triton's interpreter (fp32, small shapes):
rows 1..16, widths that are not multiples of the tiles, bias, leading batch dims; and `linear` off a GPU.
tests/gpu/test_gemv.py checks bf16 at the models' shapes, which layers take the kernel, and CUDA-graph replay
on a GPU. The interpreter is chosen when Triton is imported, hence the subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

CHECK = r"""
import torch
import torch.nn.functional as F
from ops import gemv as G

torch.manual_seed(0)
worst = 0.0
for rows, n, k, bias in ((1, 40, 300, False), (3, 33, 64, True), (16, 100, 513, True), (7, 16, 256, False)):
    x, w = torch.randn(rows, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    worst = max(worst, (G.gemv(x, w, b) - F.linear(x, w, b)).abs().max().item())
x = torch.randn(2, 3, 64)[:, :, :48]  # leading dims, rows not contiguous
w = torch.randn(24, 48)
y = G.gemv(x, w)
assert y.shape == (2, 3, 24)
worst = max(worst, (y - F.linear(x, w)).abs().max().item())
print("worst", worst)
assert worst < 1e-3, worst
assert not G.available(torch.randn(1, 64), torch.randn(G.MIN_FEATURES, 64))  # never off a GPU, even here
print("ok")
"""


def test_gemv_matches_linear_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout


def test_linear_off_gpu_is_f_linear():
    import torch
    import torch.nn.functional as F

    from ops.gemv import available, linear

    x, w, b = torch.randn(2, 32), torch.randn(8, 32), torch.randn(8)
    assert not available(x, w)  # CPU without the interpreter
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
