"""Weight streaming of the decode step's linears on a GPU: cuBLAS (`F.linear`) against ops.gemv's Triton
kernel over a grid of its tiling settings, at the Mllama-11B and OneVision-7B text shapes.

    python scripts/gemv_bench.py --rows 1 2 4 8 16 --json gemv.json

Each (shape, rows, setting) runs over enough weight copies (> 4x the L2 cache) that no call reads weights
from L2, timed with CUDA events over `--iters` calls; TB/s counts the weight bytes only. Prints, per shape
and row count, cuBLAS and the best setting, and the whole step's GEMM time at batch 1 both ways (the
shapes weighted by how many of each a step runs).
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from ops import gemv as G

# (name, N, K, count per decode step)
SHAPES = {
    "mllama-11b": [("qkv", 6144, 4096, 32), ("q_cross", 4096, 4096, 8), ("o_proj", 4096, 4096, 40),
                   ("gate_up", 28672, 4096, 40), ("down", 4096, 14336, 40), ("lm_head", 128256, 4096, 1)],
    "onevision-7b": [("qkv", 4608, 3584, 28), ("o_proj", 3584, 3584, 28), ("gate_up", 37888, 3584, 28),
                     ("down", 3584, 18944, 28), ("lm_head", 152064, 3584, 1)],
}
SETTINGS = [dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
            for bn, bk, nw, ns in itertools.product((16, 32, 64), (256, 512, 1024), (4, 8), (3, 4, 6))
            if bn * bk * 2 * ns <= 200 * 1024]  # the weight tiles in flight fit in shared memory


def timed(fn, weights, x, iters: int) -> float:
    """Seconds per call, rotating over `weights`."""
    for w in weights[:2]:
        fn(x, w)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(iters):
        fn(x, weights[i % len(weights)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SHAPES))
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="only the default setting (no grid)")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    results = []
    for model in args.models:
        step = {}
        for name, n, k, count in SHAPES[model]:
            copies = max(2, -(-4 * l2 // (n * k * 2)))
            weights = [torch.randn(n, k, device=dev, dtype=dt) * 0.02 for _ in range(copies)]
            for rows in args.rows:
                x = torch.randn(rows, k, device=dev, dtype=dt)
                torch.testing.assert_close(G.gemv(x, weights[0]), F.linear(x, weights[0]), atol=0.03, rtol=0.02)
                t_cublas = timed(F.linear, weights, x, args.iters)
                t_default = timed(G.gemv, weights, x, args.iters)  # the setting `linear` uses
                best = (t_default, "{}")
                for setting in [] if args.quick else SETTINGS:
                    try:
                        t = timed(lambda a, w, s=setting: G.gemv(a, w, **s), weights, x, args.iters)
                    except Exception as exc:  # noqa: BLE001 - a setting Triton cannot build (shared memory)
                        print(f"  {name} {setting}: {type(exc).__name__}")
                        continue
                    best = min(best, (t, str(setting)), key=lambda b: b[0])
                gb = n * k * 2 / 1e9
                row = dict(model=model, shape=name, n=n, k=k, rows=rows, cublas_us=t_cublas * 1e6,
                           default_us=t_default * 1e6, best_us=best[0] * 1e6, best=best[1],
                           cublas_tbs=gb / t_cublas / 1e3, default_tbs=gb / t_default / 1e3,
                           best_tbs=gb / best[0] / 1e3)
                results.append(row)
                print(f"{model} {name:8s} N={n:6d} K={k:5d} rows={rows:2d}: cuBLAS {row['cublas_us']:7.1f} us "
                      f"({row['cublas_tbs']:.2f} TB/s), gemv {row['default_us']:7.1f} ({row['default_tbs']:.2f}), "
                      f"best {row['best_us']:7.1f} ({row['best_tbs']:.2f}) {best[1]}", flush=True)
                if rows == 1:
                    step[name] = (count * t_cublas, count * t_default, count * best[0])
            del weights
        if step:
            tot = [sum(v[i] for v in step.values()) * 1e3 for i in range(3)]
            print(f"{model} batch-1 step GEMMs: cuBLAS {tot[0]:.3f} ms, gemv {tot[1]:.3f} ms, "
                  f"best settings {tot[2]:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
