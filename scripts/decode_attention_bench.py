"""Decode attention at the engine's shapes: the split-key Triton kernels (ops/decode_attention.py) against
SDPA as the engine called it before (GQA folded into the query axis; the slot cache's whole max_len under a
boolean mask; image K/V under an additive mask). GPU only.

    python scripts/decode_attention_bench.py [--widths 1,16,64,256] [--max-len 1537] [--position 100]

Per width: ms per call and the bytes of K/V the call needs (valid keys only) per ms, for Mllama-11B's
self-attention (8 KV heads, 32 query heads, D 128) at `--position` and its cross-attention over 6,404 image
tokens. Times are CUDA-event means over 50 calls after warm-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops import decode_attention as da  # noqa: E402


def timed(fn, *args, reps: int = 50, **kwargs) -> float:
    for _ in range(3):
        fn(*args, **kwargs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn(*args, **kwargs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def folded_sdpa(q, k, v, mask, scale):
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    out = F.scaled_dot_product_attention(q.view(b, hkv, hq // hkv, d), k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, hq, 1, d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="1,16,64,256")
    p.add_argument("--max-len", type=int, default=1537)
    p.add_argument("--position", type=int, default=100)
    a = p.parse_args()
    dev, dt, hq, hkv, d = "cuda", torch.bfloat16, 32, 8, 128
    print("| width | self: SDPA ms | self: kernel ms (GB/s of valid K/V) | cross: SDPA ms | cross: kernel ms (GB/s) |")
    print("|---|---|---|---|---|")
    for w in (int(x) for x in a.widths.split(",")):
        q = torch.randn(w, hq, 1, d, device=dev, dtype=dt)
        k = torch.randn(w, hkv, a.max_len, d, device=dev, dtype=dt)
        v = torch.randn_like(k)
        pos = torch.full((w,), a.position, device=dev)
        bool_mask = (torch.arange(a.max_len, device=dev)[None, :] <= pos[:, None])[:, None, None, :]
        s_sdpa = timed(folded_sdpa, q, k, v, bool_mask, d ** -0.5)
        s_ours = timed(da.decode_attention, q, k, v, d ** -0.5, lengths=pos + 1)
        s_bytes = 2 * w * hkv * (a.position + 1) * d * 2
        del k, v
        ck = torch.randn(w, hkv, 6404, d, device=dev, dtype=dt)
        cv = torch.randn_like(ck)
        cmask = torch.zeros(w, 1, 1, 6404, device=dev, dtype=dt)
        c_sdpa = timed(folded_sdpa, q, ck, cv, cmask, d ** -0.5)
        c_ours = timed(da.decode_attention, q, ck, cv, d ** -0.5, mask=cmask)
        c_bytes = 2 * w * hkv * 6404 * d * 2
        print(f"| {w} | {s_sdpa:.3f} | {s_ours:.3f} ({s_bytes / s_ours / 1e6:.0f}) | {c_sdpa:.3f} | "
              f"{c_ours:.3f} ({c_bytes / c_ours / 1e6:.0f}) |", flush=True)
        del ck, cv


if __name__ == "__main__":
    main()
