"""ops/gemv.py's Triton GEMV in bf16 on a GPU at the text decoders' shapes: against fp32 truth as closely as
cuBLAS's bf16 result is, and under CUDA-graph replay with new inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ops import gemv as G

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("n,k,bias", [(6144, 4096, False), (4608, 3584, True), (37888, 3584, False),
                                      (128256, 4096, False)])
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_bf16_error_matches_cublas(n, k, bias, rows):
    torch.manual_seed(0)
    x = torch.randn(rows, k, device="cuda")
    w = torch.randn(n, k, device="cuda") * k**-0.5
    b = torch.randn(n, device="cuda") if bias else None
    truth = F.linear(x, w, b)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), None if b is None else b.bfloat16()
    assert G.available(xb, wb) == (n >= G.MIN_FEATURES)  # narrower layers stay on cuBLAS (still checked here)
    ours = (G.gemv(xb, wb, bb).float() - truth).abs().max().item()
    theirs = (F.linear(xb, wb, bb).float() - truth).abs().max().item()
    assert ours <= 1.5 * theirs + 1e-3, (ours, theirs)


def test_graph_replay_reads_new_inputs():
    torch.manual_seed(0)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(G.MIN_FEATURES, 1024, device="cuda", dtype=torch.bfloat16) * 0.02
    assert G.available(x, w)
    G.linear(x, w)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = G.linear(x, w)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(y, G.gemv(x, w), rtol=0, atol=0)  # deterministic: no split-K, no atomics
        torch.testing.assert_close(y.float(), F.linear(x.float(), w.float()), atol=0.02, rtol=0.02)
