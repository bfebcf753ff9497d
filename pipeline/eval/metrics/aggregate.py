"""Aggregates of per-row scores: the value reported for a cell, n, error count and a 95% confidence interval.

Contract: `aggregate(scores, errors, corpus=None) -> Aggregate`, pure. Error rows (no prediction) are in
`scores` as 0: a model that starts failing rows must lose points, not silently shrink n.

Interval: Wilson's score interval when every score is 0 or 1 (accuracy-like; it stays sensible for small
n and for 0% / 100%), otherwise the normal approximation mean +- 1.96 s / sqrt(n) with the sample standard
deviation. A corpus-level value (BLEU) is reported as the value with the mean's interval shifted onto it:
a cheap, stated approximation, not a bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Aggregate:
    value: float
    n: int
    errors: int
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(scores: list[float], z: float = Z95) -> tuple[float, float]:
    n = len(scores)
    if n == 0:
        return 0.0, 0.0
    mean = sum(scores) / n
    if n == 1:
        return mean, mean
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean - half, mean + half


def aggregate(scores: list[float], errors: int = 0, corpus: float | None = None) -> Aggregate:
    n = len(scores)
    mean = sum(scores) / n if n else 0.0
    if all(s in (0.0, 1.0) for s in scores):
        low, high = wilson(sum(scores), n)
    else:
        low, high = mean_interval(scores)
    if corpus is not None:
        low, high, mean = corpus - (mean - low), corpus + (high - mean), corpus
    return Aggregate(value=mean, n=n, errors=errors, ci_low=low, ci_high=high)
