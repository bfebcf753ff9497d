"""CUDA graphs for the decode step, one per batch-size bucket.

`GraphedStep(fn, buckets)` captures `fn(B)` (which must read its inputs from static buffers and return a
tensor) for every bucket B, largest first, sharing one memory pool. Calling it with n live rows replays
the smallest bucket >= n and returns that bucket's output view (rows past n are padding). With
`enabled=False` (CPU, or `--no-cuda-graphs`) it simply runs `fn(bucket)` eagerly, so both paths run
exactly the same bucketed shapes and can be compared token for token.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch


def default_buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch + 1, 16))
    return sorted({min(s, max_batch) for s in sizes} | {max_batch})


class GraphedStep:
    def __init__(self, fn: Callable[[int], torch.Tensor], buckets: list[int], enabled: bool):
        self.fn, self.buckets, self.enabled = fn, sorted(buckets), enabled
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def bucket(self, n: int) -> int:
        i = bisect.bisect_left(self.buckets, n)
        if i == len(self.buckets):
            raise ValueError(f"{n} rows exceed the largest bucket {self.buckets[-1]}")
        return self.buckets[i]

    @torch.inference_mode()
    def capture(self) -> None:
        if not self.enabled:
            return
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b in reversed(self.buckets):
                for _ in range(2):  # warm up allocator and kernels outside the capture
                    self.fn(b)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    out = self.fn(b)
                pool = graph.pool()
                self.graphs[b] = (graph, out)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    @torch.inference_mode()
    def __call__(self, n: int) -> torch.Tensor:
        b = self.bucket(n)
        if not self.enabled:
            return self.fn(b)
        graph, out = self.graphs[b]
        graph.replay()
        return out
