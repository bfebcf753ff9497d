"""Wide linear layers for a few rows (small-batch decode): a weight-streaming Triton GEMV.

    y = linear(x, weight, bias)    # x [..., K], weight [N, K], bias [N] or None -> [..., N]

Why: a decode step at batch 1 reads every weight once and does ~1 FLOP per byte, so it is bound by how fast
the GEMMs stream weights. Each program here owns BLOCK_N output features over the whole K: it reads its
[BLOCK_N, K] weight rows once, in BLOCK_K-wide tiles, and multiplies them with all (at most MAX_ROWS) input
rows on the tensor cores (rows padded to 16, free where bytes bound the time); fp32 accumulation, one
store, no split-K reduction, deterministic.

Where it wins (scripts/gemv_bench.py on an H200, weights never in L2, BENCHMARKS.md session 15): only the
wide layers, N >= MIN_FEATURES, where N / BLOCK_N programs keep every SM streaming: OneVision-7B's gate_up
(N 37,888) 66.5 us vs cuBLAS 71.5 (4.09 vs 3.80 TB/s) and both lm_heads (4.42-4.45 vs 4.22 TB/s), at 1-16
rows. Narrower layers need split-K for enough parallelism (N / BLOCK_N programs are too few for 132 SMs): at
batch 1 this kernel took 1.1x (Mllama's gate_up, N 28,672) to 2.8x (N 3,584-6,144) cuBLAS's time, and routing
every decode linear through it made Mllama-11B's batch-1 step 5.87 -> 6.27 ms.

`linear` takes this path for CUDA fp16/bf16 inputs with at most MAX_ROWS rows and N >= MIN_FEATURES
(CUDA-graph-safe: shapes and the config are fixed per call site) and falls back to `F.linear` elsewhere, and
where Triton cannot build the kernel on the device (checked once, with a warning). `VLMCAP_GEMV=off` turns it
off (A/B runs). Under `TRITON_INTERPRET=1`, `gemv` (the kernel itself) also runs on CPU tensors (the CPU tests);
`linear` never takes it off a GPU: other tests run whole engines under the interpreter for the decode kernels,
and every linear through the interpreted GEMV made one of them 50x slower.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MAX_ROWS = 16  # input rows one call serves (the tensor-core tile's M); more rows go to cuBLAS
MIN_FEATURES = 32768  # narrower layers go to cuBLAS (see above)


@functools.cache
def _kernel():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def gemv_kernel(X, W, B, Y, M, N, K, sxm, swn, sym,
                    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        rk = tl.arange(0, BLOCK_K)
        w_ptrs = W + rn[:, None] * swn + rk[None, :]  # [BLOCK_N, BLOCK_K]
        x_ptrs = X + rm[:, None] * sxm + rk[None, :]  # [BLOCK_M, BLOCK_K]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + rk) < K
            w = tl.load(w_ptrs, mask=(rn[:, None] < N) & k_ok[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
            acc += tl.dot(x, tl.trans(w))  # [BLOCK_M, BLOCK_K] @ [BLOCK_K, BLOCK_N]
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        if HAS_BIAS:
            acc += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rm[:, None] * sym + rn[None, :], acc.to(Y.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    return triton, gemv_kernel


def default_block_n(n: int) -> int:
    """Output features per program (the best or within 1% of it for the wide layers in the bench's grid)."""
    return 16 if n <= 16384 else 32


def available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    rows = x.numel() // max(x.shape[-1], 1)
    return (x.is_cuda
            and 0 < rows <= MAX_ROWS
            and weight.shape[0] >= MIN_FEATURES
            and x.dtype == weight.dtype
            and x.dtype in (torch.float16, torch.bfloat16)
            and weight.stride(-1) == 1
            and os.environ.get("VLMCAP_GEMV", "on") != "off"
            and _kernel() is not None
            and _works_on(str(x.device), x.dtype))


@functools.cache
def _works_on(device: str, dtype: torch.dtype) -> bool:
    """Build and run the kernel once per (device, dtype); a failure (old GPU, broken Triton) disables it."""
    try:
        x = torch.randn(1, 64, device=device, dtype=dtype)
        w = torch.randn(32, 64, device=device, dtype=dtype)
        torch.testing.assert_close(gemv(x, w), F.linear(x, w), atol=0.05, rtol=0.02)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means: use cuBLAS
        log.warning("Triton GEMV unavailable on %s (%r); small-batch linears use cuBLAS", device, exc)
        return False


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, block_n: int | None = None,
         block_k: int = 256, num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """The kernel itself: x [..., K] with at most MAX_ROWS rows -> [..., N] (callers use `linear`; the
    tuning arguments are for scripts/gemv_bench.py)."""
    triton, kernel = _kernel()
    n, k = weight.shape
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    bn = block_n or default_block_n(n)
    kernel[(triton.cdiv(n, bn),)](
        x2, weight, bias if bias is not None else weight, y, m, n, k, x2.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=block_k, num_warps=num_warps,
        num_stages=num_stages)
    return y.view(*x.shape[:-1], n)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, streamed by the Triton GEMV for a wide layer (>= MIN_FEATURES outputs) and at most MAX_ROWS
    rows of x on a GPU."""
    if available(x, weight):
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)
