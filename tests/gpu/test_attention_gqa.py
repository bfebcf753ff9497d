"""ops.attention's grouped-query prefill on a GPU (SDPA with `enable_gqa`, no K/V copies) against fp32 truth
computed with the K/V heads repeated per group: as close as the repeated bf16 call gets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ops.attention import attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("hq,hkv,causal", [(28, 4, True), (32, 8, True), (28, 4, False)])
def test_gqa_prefill_matches_repeated_heads(hq, hkv, causal):
    torch.manual_seed(0)
    b, s, d = 2, 1000, 128  # OneVision-7B's and Llama's heads
    q = torch.randn(b, hq, s, d, device="cuda")
    k, v = torch.randn(b, hkv, s, d, device="cuda"), torch.randn(b, hkv, s, d, device="cuda")
    g = hq // hkv

    def repeated(q, k, v):
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                              is_causal=causal)

    truth = repeated(q, k, v)
    bf = [t.bfloat16() for t in (q, k, v)]
    ours = attention(*bf, causal=causal)
    assert ours.shape == truth.shape and ours.dtype == torch.bfloat16
    ours_err = (ours.float() - truth).abs().max().item()
    ref_err = (repeated(*bf).float() - truth).abs().max().item()
    assert ours_err <= 2 * ref_err + 1e-3, (ours_err, ref_err)
