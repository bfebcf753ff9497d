"""models/mllama/vision.py `attend`: the reference's mask (pad queries never see pad keys; real queries see every
key) computed as two unmasked passes, both ways the layer may take (real queries gathered, or every query first
and the pad rows overwritten), against one dense masked SDPA."""

import pytest
import torch
import torch.nn.functional as F

from models.mllama.vision import PadGroup, attend


@pytest.mark.parametrize("mostly_pads", [True, False])
def test_two_unmasked_passes_equal_the_reference_mask(mostly_pads):
    g = torch.Generator().manual_seed(0)
    n, heads, tokens, dim = 2, 3, 40, 8
    q, k, v = (torch.randn(n, heads, tokens, dim, generator=g, dtype=torch.float64) for _ in range(3))
    is_pad = torch.zeros(tokens, dtype=torch.bool)
    is_pad[7:8] = is_pad[15:16] = True  # the multiple-of-8 padding of two real tiles
    is_pad[16:] = True  # three padding tiles
    group = PadGroup(torch.arange(n), (~is_pad).nonzero()[:, 0], is_pad.nonzero()[:, 0], mostly_pads,
                     (~is_pad).view(1, 1, 1, -1))
    allowed = ~(is_pad[:, None] & is_pad[None, :])  # [queries, keys]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert torch.allclose(attend(q, k, v, group), want, atol=1e-12)
