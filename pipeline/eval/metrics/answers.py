"""Short-answer metrics against a list of reference answers: exact match, ANLS, ChartQA relaxed accuracy.

Contract: each function takes one prediction (None for an error row) and the row's reference answers and
returns a float in [0, 1]; pure, deterministic, no I/O. The best reference counts (max over answers).
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def normalize_exact(text: str) -> str:
    """Our exact-match normalisation (no official scorer exists): case-folded, whitespace collapsed,
    surrounding whitespace and one trailing period removed ("Paris." == "paris")."""
    text = _SPACES.sub(" ", text.strip().lower())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str | None, answers: list[str]) -> float:
    if prediction is None:
        return 0.0
    pred = normalize_exact(prediction)
    return 1.0 if any(pred == normalize_exact(a) for a in answers) else 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each cost 1), two rows of the DP table at a time."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str | None, answers: list[str], tau: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question (ST-VQA / DocVQA official rule): strings
    lower-cased with whitespace runs collapsed; similarity = 1 - edit distance / max length, set to 0 when
    the normalised distance is >= tau; the best answer counts. Two empty strings are identical (1.0)."""
    if prediction is None or not answers:
        return 0.0
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for answer in answers:
        gold = " ".join(answer.strip().lower().split())
        length = max(len(pred), len(gold))
        distance = levenshtein(pred, gold) / length if length else 0.0
        best = max(best, 1.0 - distance if distance < tau else 0.0)
    return best


def _to_float(text: str) -> float | None:
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed correctness (pix2struct's official scorer): numbers within 5% of a non-zero
    target; anything else by case-insensitive string equality. Quirks kept: "45%" reads as 0.45 (so it
    does not match a target "45"); "1,234" is not a number; a target of 0 is compared as a string."""
    pred, gold = _to_float(prediction), _to_float(target)
    if pred is not None and gold:  # `gold` falsy for 0.0: the official code compares those as strings
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str | None, answers: list[str]) -> float:
    """Best relaxed correctness over the answers; surrounding whitespace of the prediction is ignored."""
    if prediction is None:
        return 0.0
    pred = prediction.strip()
    return 1.0 if any(relaxed_correct(pred, a.strip()) for a in answers) else 0.0
