"""The split-key decode kernels (ops/decode_attention.py) in bf16 on a GPU, at Mllama-11B's decode shapes:
against fp32 SDPA truth as closely as bf16 SDPA gets, and under CUDA-graph replay with new lengths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ops import decode_attention as da

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sdpa(q, k, v, mask=None):
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)


@pytest.mark.parametrize("hq,hkv", [(32, 8), (28, 4)])
def test_bf16_error_matches_sdpa(hq, hkv):
    torch.manual_seed(0)
    b, t, d = 16, 6404, 128
    q = torch.randn(b, hq, 1, d, device="cuda")
    k, v = torch.randn(b, hkv, t, d, device="cuda"), torch.randn(b, hkv, t, d, device="cuda")
    mask = torch.zeros(b, 1, 1, t, device="cuda")
    low = torch.finfo(torch.bfloat16).min  # as the models build masks (fp32's min is -inf in bf16)
    mask[: b // 2, ..., 1601:] = low  # one real tile of four
    mask[-1] = low  # every key hidden (a text-only row, whose cross-attention output the model zeroes)
    truth = sdpa(q[:-1], k[:-1], v[:-1], mask[:-1])
    bf = [x.bfloat16() for x in (q, k, v, mask)]
    got = da.decode_attention(*bf[:3], mask=bf[3]).float()
    ours = (got[:-1] - truth).abs().max().item()
    theirs = (sdpa(*[x[:-1] for x in bf]).float() - truth).abs().max().item()
    assert ours <= 2 * theirs + 1e-3, (ours, theirs)
    # Every key at finfo.min: a uniform average, as SDPA's math backend (CPU) gives; its CUDA kernels give 0
    # there (measured on an H200: the min times log2(e) overflows to -inf).
    uniform = v[-1].bfloat16().float().mean(1).repeat_interleave(hq // hkv, 0)  # [Hq, D]
    assert (got[-1, :, 0] - uniform).abs().max().item() < 1e-2
    lens = torch.randint(1, t + 1, (b,), device="cuda")
    got = da.decode_attention(*bf[:3], lengths=lens).float()
    for i, n in enumerate(lens.tolist()):
        keys = [x[i:i + 1, :, :n] for x in (k, v)]
        want = sdpa(q[i:i + 1], *keys)
        theirs = (sdpa(bf[0][i:i + 1], *[x.bfloat16() for x in keys]).float() - want).abs().max().item()
        assert (got[i:i + 1] - want).abs().max().item() <= 2 * theirs + 1e-3, (i, n)


def test_graph_replay_reads_new_lengths():
    torch.manual_seed(1)
    b, hq, hkv, t, d = 8, 32, 8, 1537, 128
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((b,), 10, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        da.decode_attention(q, k, v, lengths=lens)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = da.decode_attention(q, k, v, lengths=lens)
    for n in (1, 300, 1537):
        lens.fill_(n)
        graph.replay()
        assert torch.equal(out, da.decode_attention(q, k, v, lengths=lens))
        want = sdpa(q[:, :, :, :].float(), k[:, :, :n].float(), v[:, :, :n].float())
        assert (out.float() - want).abs().max().item() < 2e-2
