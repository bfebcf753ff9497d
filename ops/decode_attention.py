"""Decode attention on the GPU: one query per row over a long K/V, split over the keys (flash-decoding).

    out = decode_attention(q, k, v, scale, lengths=positions + 1)    # self-attention over a slot cache
    out = decode_attention(q, k, v, scale, mask=cross_mask)          # cross-attention over image K/V

q [B, Hq, 1, D], k/v [>=B, Hkv, T, D] (row b of q reads row b of k/v; last dim contiguous), Hq a multiple of
Hkv; returns [B, Hq, 1, D] in q's dtype. `lengths` [B] (a device tensor, so a CUDA graph replays it with new
values): row b attends to keys [0, lengths[b]) only, and the keys past it are never read. `mask` [B, 1, 1, T]
(additive, `finfo.min` for hidden keys, as ops.attention's callers build it): every key is read.

Why: PyTorch's SDPA has no length argument, so a slot cache's decode step read every slot's whole
`max_len` of self-attention K/V (201 MB per sequence per step for Mllama-11B at max_len 1,537, where a
caption needs ~100 positions: 0.25 ms per layer at width 64 on an H200, 0.07 here), and over the 210 MB of
image K/V a Mllama sequence reads per step it reached 3.1 TB/s (3.9 here; scripts/decode_attention_bench.py,
BENCHMARKS.md session 13). Here each (row, kv head, chunk of CHUNK keys) is one program that serves all query
heads of the group (K/V are read once per group); chunks past a row's length return at once; a second kernel
merges the chunks' partial results by their softmax maxima and sums.

Numerics follow SDPA's: scores and softmax in fp32, probabilities cast to the value dtype for the second
product, additive masks added in fp32. A row with every key at `finfo.min` averages all keys uniformly, as
SDPA's math backend does (its CUDA kernels return 0 there); in decode such rows are only Mllama's text-only
requests, whose cross-attention output the model zeroes, and a CUDA-graph bucket's padding rows.

`available(q)` says whether this path applies (CUDA, Triton importable, fp16/bf16, D a power of two <= 256);
ops.attention and ops.slot_attention fall back to SDPA otherwise, and where Triton cannot build or run the
kernels on the device (checked once, with a warning). `VLMCAP_DECODE_ATTENTION=sdpa` turns it off (A/B runs).
Under `TRITON_INTERPRET=1` the kernels also run on CPU tensors (the CPU tests do that).
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

CHUNK = 256  # keys per program: Mllama's 6,404 image tokens -> 26 programs per (row, kv head)
MAX_CHUNKS = 64  # longer K/V get longer chunks: the merge holds [chunks, D] fp32 values in one program
BLOCK_N = 64  # keys per inner step


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels():
    """Compile-on-first-use Triton kernels, or None where Triton is missing."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def partial_kernel(Q, K, V, Mask, Lens, NewK, NewV, Out, Max, Sum,
                       sqb, sqh, skb, skh, skt, svb, svh, svt, smb, snkb, snkh, snvb, snvh,
                       sob, soh, sos, slb, slh, T, scale,
                       GROUPS: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
                       BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr,
                       HAS_NEW: tl.constexpr):
        b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        end = T
        if HAS_LENS:
            end = tl.minimum(tl.load(Lens + b).to(tl.int32), T)
        start = s * CHUNK
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        if HAS_NEW:  # this step's key/value belong at the row's last position: used from registers, and
            # stored by the one program whose chunk holds that position (no program reads it back)
            pos = end - 1
            new_k = tl.load(NewK + b * snkb + h * snkh + d)
            new_v = tl.load(NewV + b * snvb + h * snvh + d)
            if (pos >= start) & (pos < start + CHUNK):
                tl.store(K + b * skb + h * skh + pos * skt + d, new_k)
                tl.store(V + b * svb + h * svh + pos * svt + d, new_v)
        end = tl.minimum(end, start + CHUNK)
        heads = h * GROUPS + g
        q = tl.load(Q + b * sqb + heads[:, None] * sqh + d[None, :], mask=(g < GROUPS)[:, None], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid = n < end
            k = tl.load(K + b * skb + h * skh + n[:, None] * skt + d[None, :], mask=valid[:, None], other=0.0)
            if HAS_NEW:
                k = tl.where((n == pos)[:, None], new_k[None, :], k)
            sc = tl.dot(q, tl.trans(k)) * scale  # [BLOCK_G, BLOCK_N] fp32
            if HAS_MASK:
                sc += tl.load(Mask + b * smb + n, mask=valid, other=0.0).to(tl.float32)[None, :]
            sc = tl.where(valid[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # keys all at -inf (not finfo.min): weight 0
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(sc - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + n[:, None] * svt + d[None, :], mask=valid[:, None], other=0.0)
            if HAS_NEW:
                v = tl.where((n == pos)[:, None], new_v[None, :], v)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        # The chunk's max and sum, not their log-sum-exp: under a `finfo.min` mask m_i is ~-3.4e38, where
        # adding log(l_i) is lost to rounding and chunks of different sizes would weigh the same.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty chunk (past the row's length): l_i = 0
        keep = g < GROUPS
        tl.store(Out + b * sob + heads[:, None] * soh + s * sos + d[None, :], out, mask=keep[:, None])
        tl.store(Max + b * slb + heads * slh + s, m_i, mask=keep)
        tl.store(Sum + b * slb + heads * slh + s, l_i, mask=keep)

    @triton.jit
    def merge_kernel(Out, Max, Sum, Res, S, sob, soh, sos, slb, slh, srb, srh,
                     D: tl.constexpr, BLOCK_S: tl.constexpr):
        b, h = tl.program_id(0), tl.program_id(1)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, D)
        m = tl.load(Max + b * slb + h * slh + s, mask=s < S, other=float("-inf"))
        top = tl.max(m, 0)
        top = tl.where(top == float("-inf"), 0.0, top)  # no key at all (a length of 0): zeros
        w = tl.load(Sum + b * slb + h * slh + s, mask=s < S, other=0.0) * tl.exp(m - top)
        total = tl.sum(w, 0)
        w = w / tl.where(total > 0, total, 1.0)
        part = tl.load(Out + b * sob + h * soh + s[:, None] * sos + d[None, :], mask=(s < S)[:, None], other=0.0)
        res = tl.sum(part * w[:, None], 0)
        tl.store(Res + b * srb + h * srh + d, res.to(Res.dtype.element_ty))

    return partial_kernel, merge_kernel, triton.next_power_of_2


def available(q: torch.Tensor) -> bool:
    d = q.shape[-1]
    return (os.environ.get("VLMCAP_DECODE_ATTENTION", "triton") != "sdpa"
            and (q.is_cuda or _interpreting())
            # fp32 stays with SDPA on the GPU: tl.dot would round it to tf32
            and (q.dtype in (torch.float16, torch.bfloat16) or (q.dtype == torch.float32 and _interpreting()))
            and d >= 16 and d <= 256 and d & (d - 1) == 0
            and _kernels() is not None and _works_on(str(q.device), q.dtype, d))


@functools.cache
def _works_on(device: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether Triton can build and run the kernels here (it needs a C compiler for its launcher, for one):
    checked once per device, on the first decode step, which the engine runs before capturing CUDA graphs.
    Where it cannot, decode keeps PyTorch's SDPA, with a warning, instead of failing the replica."""
    try:
        _probe(device, dtype, head_dim)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure to build or run: fall back
        log.warning("decode attention: Triton kernels unavailable on %s (%s: %s); using SDPA", device,
                    type(exc).__name__, exc)
        return False


def _probe(device: str, dtype: torch.dtype, head_dim: int) -> None:
    q = torch.ones(1, 1, 1, head_dim, device=device, dtype=dtype)
    k = torch.ones(1, 1, 4, head_dim, device=device, dtype=dtype)
    out = decode_attention(q, k, k, lengths=torch.full((1,), 4, device=device))
    if not torch.allclose(out.float().cpu(), torch.ones(1, 1, 1, head_dim)):
        raise RuntimeError("wrong result on a constant input")


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                     lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     new_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`new_kv` (k, v [B, Hkv, 1, D], with `lengths`): this step's key and value, written into k/v at each
    row's last position (lengths - 1) by the kernel itself and attended to, saving a cache-write kernel
    per tensor and layer (the slot cache's decode step)."""
    partial_kernel, merge_kernel, next_pow2 = _kernels()
    b, hq, s, d = q.shape
    hkv, t = k.shape[1], k.shape[2]
    if s != 1 or hq % hkv or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, k {tuple(k.shape)}: one query per row, "
                         "Hq a multiple of Hkv, contiguous head dim")
    if new_kv is not None:
        nk, nv = new_kv
        if lengths is None or nk.shape != (b, hkv, 1, d) or nv.shape != nk.shape or nk.stride(-1) != 1 \
                or nv.stride(-1) != 1:
            raise ValueError(f"decode_attention: new_kv needs lengths and k/v of shape {(b, hkv, 1, d)} with a "
                             f"contiguous head dim, got {tuple(nk.shape)}, {tuple(nv.shape)}")
    groups = hq // hkv
    chunk = max(CHUNK, next_pow2(triton_cdiv(t, MAX_CHUNKS)))
    chunks = triton_cdiv(t, chunk)
    q = q.reshape(b, hq, d)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty(b, hq, chunks, d, dtype=torch.float32, device=q.device)
    top = torch.empty(b, hq, chunks, dtype=torch.float32, device=q.device)
    total = torch.empty_like(top)
    mask_row_stride = 0
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[0] not in (1, b):
            raise ValueError(f"decode_attention: mask {tuple(mask.shape)} is not [B or 1, 1, 1, T]")
        mask = mask.reshape(mask.shape[0], mask.shape[-1])  # [B or 1, T]
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
        mask_row_stride = mask.stride(0) if mask.shape[0] == b and b > 1 else 0  # one row for all: stride 0
    dummy = out  # any tensor: the kernel never reads an absent mask / length
    nk, nv = new_kv if new_kv is not None else (dummy, dummy)
    partial_kernel[(b, hkv, chunks)](
        q, k, v, dummy if mask is None else mask, dummy if lengths is None else lengths, nk, nv, out, top, total,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask_row_stride, nk.stride(0), nk.stride(1), nv.stride(0), nv.stride(1),
        out.stride(0), out.stride(1), out.stride(2), top.stride(0), top.stride(1), t,
        d ** -0.5 if scale is None else scale,
        GROUPS=groups, BLOCK_G=max(16, next_pow2(groups)), D=d, CHUNK=chunk, BLOCK_N=BLOCK_N,
        HAS_MASK=mask is not None, HAS_LENS=lengths is not None, HAS_NEW=new_kv is not None)
    res = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    merge_kernel[(b, hq)](out, top, total, res, chunks, out.stride(0), out.stride(1), out.stride(2), top.stride(0),
                          top.stride(1), res.stride(0), res.stride(1), D=d, BLOCK_S=max(16, next_pow2(chunks)))
    return res.view(b, hq, 1, d)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
