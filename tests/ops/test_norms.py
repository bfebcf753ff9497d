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
