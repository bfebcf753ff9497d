"""Time each SDPA backend on the attention shapes of the vision towers (issue 16: which kernel for head dim 80?).

    python scripts/attention_backends.py            # GPU; prints ms and TFLOP/s per (shape, backend)

Shapes (bf16, unmasked, [batch, heads, queries, head_dim] x [.., keys, ..]): Mllama-11B's ViT for 16 images of 4
tiles (6,432 tokens, 16 heads of 80), one-tile images' real queries over every key and their pad queries over
the real keys (models/mllama/vision.py), and OneVision's SigLIP crops (729 tokens, 16 heads of 72). A backend
that refuses a shape prints why instead of a time.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {  # name: (batch, heads, queries, keys, head_dim)
    "mllama 4 tiles": (16, 16, 6432, 6432, 80),
    "mllama 1 tile, real q": (16, 16, 1601, 6432, 80),
    "mllama 1 tile, pad q": (16, 16, 4831, 1601, 80),
    "siglip crops": (160, 16, 729, 729, 72),
}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def time_ms(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs a GPU")
    results = []
    for name, (b, h, sq, sk, d) in SHAPES.items():
        q = torch.randn(b, h, sq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, h, sk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        flop = 4 * b * h * sq * sk * d
        ref = F.scaled_dot_product_attention(q, k, v)
        for backend, which in BACKENDS.items():
            row = {"shape": name, "backend": backend}
            try:
                with sdpa_kernel([which]):
                    ms = time_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
                    err = (F.scaled_dot_product_attention(q, k, v) - ref).abs().max().item()
                row.update(ms=round(ms, 3), tflops=round(flop / ms / 1e9, 1), max_abs_diff=err)
            except RuntimeError as exc:
                row["error"] = str(exc).splitlines()[0][:120]
            print(json.dumps(row), flush=True)
            results.append(row)


if __name__ == "__main__":
    main()
