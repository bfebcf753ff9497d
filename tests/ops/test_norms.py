"""ops/norms.py: RMSNorm's Llama/Qwen2 rounding order, and `add` (a pending residual branch added first)."""

import torch

from ops.norms import RMSNorm


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # the checkpoints' convention: statistic in fp32, cast back, then the weight
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def test_rms_norm_rounds_like_the_reference():
    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 64).bfloat16()
    assert torch.equal(norm(x), reference(x, norm.weight, 1e-5))


def test_add_returns_the_new_residual_and_its_norm():
    torch.manual_seed(0)
    norm = RMSNorm(64).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
    x, h = torch.randn(2, 7, 64).bfloat16(), torch.randn(2, 7, 64).bfloat16()
    residual, normed = norm.add(x, h)
    assert torch.equal(residual, x + h)  # the stream carries the bf16 sum, as `x = x + h` did
    assert torch.equal(normed, norm(x + h))
    residual, normed = norm.add(x, None)  # nothing pending: the stream is unchanged
    assert residual is x and torch.equal(normed, norm(x))


def test_compiled_norms_see_rows_of_a_static_width(monkeypatch):
    """Whatever shapes the decoders pass (hidden [B, S, D], decode [B, 1, D], per-head [B, S, H, d]), the
    compiled kernels see [rows, width]: one graph per width plus one for a single row, never a symbolic width.
    (cuda_compiled only compiles for CUDA tensors; dynamo's guards are the same on the CPU, so the norm
    functions are compiled here with a backend that records each graph.)"""
    from ops import norms

    graphs = []

    def recording(gm, example_inputs):
        shapes = [n.meta["example_value"].shape for n in gm.graph.nodes
                  if n.op == "placeholder" and isinstance(n.meta.get("example_value"), torch.Tensor)]
        graphs.append(shapes)
        return gm.forward

    def compiled(fn):
        c = torch.compile(fn, backend=recording)
        return lambda x, *args: c(x, *args)

    torch._dynamo.reset()
    monkeypatch.setattr(norms, "rms_norm", compiled(norms._rms_norm))
    monkeypatch.setattr(norms, "add_rms_norm", compiled(norms.add_rms_norm.__wrapped__))
    hidden, head = RMSNorm(64), RMSNorm(16)
    with torch.inference_mode():
        for b, s in ((4, 21), (1, 12), (3, 1), (8, 1), (1, 1), (2, 9)):
            x = torch.randn(b, s, 64)
            hidden(x)
            hidden.add(x, torch.randn(b, s, 64))
            head(torch.randn(b, s, 4, 16))
            head(torch.randn(b, 2, s, 16).transpose(1, 2))  # not contiguous: reshape copies
    assert len(graphs) <= 6, graphs  # (hidden, head, add) x (one row, any rows)
    assert all(isinstance(shape[-1], int) for shapes in graphs for shape in shapes), graphs
    torch._dynamo.reset()
