"""ANLS against the `anls` package (test-only oracle), ChartQA relaxed accuracy and exact match on hand
cases, multiple-choice extraction on many output styles, and the aggregates' intervals."""

from __future__ import annotations

import random

import pytest
from anls import anls_score

from pipeline.eval.metrics.aggregate import aggregate, wilson
from pipeline.eval.metrics.answers import anls, exact_match, levenshtein, relaxed_accuracy
from pipeline.eval.metrics.choice import choice_accuracy, extract_choice

ANLS_CASES = [
    ("Invoice", ["invoice"]), ("invoice no", ["Invoice No."]), ("  Total   Due ", ["total due"]),
    ("1,250.00", ["$1,250.00", "1250"]), ("abc", ["xyz"]), ("", ["a"]), ("Sept 5", ["September 5", "5 Sep"]),
    ("Acme Corp", ["ACME Corporation"]), ("ab", ["abcd"]), ("abcd", ["abc"]), ("", [""]),
]


@pytest.mark.parametrize("pred,golds", ANLS_CASES)
def test_anls_matches_package(pred, golds):
    assert anls(pred, golds) == pytest.approx(anls_score(pred, golds), abs=1e-9)


def test_anls_random_strings_match_package():
    rng = random.Random(0)
    for _ in range(200):
        pred = "".join(rng.choice("abc d") for _ in range(rng.randint(0, 8)))
        golds = ["".join(rng.choice("abcd ") for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 3))]
        assert anls(pred, golds) == pytest.approx(anls_score(pred, golds), abs=1e-9), (pred, golds)


def test_anls_threshold_hand_case():
    assert anls("abcd", ["abce"]) == pytest.approx(0.75)  # distance 1/4 < 0.5
    assert anls("ab", ["abcd"]) == 0.0  # distance 2/4 = 0.5 is not < 0.5
    assert levenshtein("kitten", "sitting") == 3


@pytest.mark.parametrize("pred,answers,want", [
    ("12", ["12.5"], 1.0),  # |12 - 12.5| / 12.5 = 4% <= 5%
    ("11.8", ["12.5"], 0.0),  # 5.6%
    ("12.5", ["12.5"], 1.0),
    (" 100 ", ["104"], 1.0),
    ("45%", ["0.45"], 1.0),  # "45%" reads as 0.45
    ("45%", ["45"], 0.0),  # ... so it does not match 45 (official quirk)
    ("0", ["0"], 1.0),  # a zero target is compared as a string
    ("0.0", ["0"], 0.0),
    ("1,234", ["1234"], 0.0),  # not a number for the official scorer
    ("Yes", ["yes"], 1.0),
    ("Mexico", ["Canada", "mexico"], 1.0),
    (None, ["1"], 0.0),
])
def test_relaxed_accuracy(pred, answers, want):
    assert relaxed_accuracy(pred, answers) == want


@pytest.mark.parametrize("pred,answers,want", [
    ("Paris", ["paris"], 1.0), ("Paris.", ["Paris"], 1.0), ("  New   York ", ["new york"], 1.0),
    ("Paris, France", ["paris"], 0.0), (None, ["x"], 0.0), ("x", [], 0.0),
])
def test_exact_match(pred, answers, want):
    assert exact_match(pred, answers) == want


OPTIONS = ["cat", "dog", "red car", "car"]
CHOICES = [
    ("B", "B"), ("b", None), ("(B)", "B"), ("B.", "B"), ("[C]", "C"), ("**D**", "D"),
    ("B. dog", "B"), ("B) dog", "B"), ("(B) dog", "B"), ("C: red car", "C"), ("D - car", "D"),
    ("The answer is B.", "B"), ("Answer: (C)", "C"), ("The correct option is D", "D"), ("I choose A", "A"),
    ("answer: c", "C"), ("I think it's (C), not (B)... actually (D)", "D"),
    ("It is C because the car is red", "C"), ("A cat is sitting on the mat", "A"),
    ("The animal shown is a dog.", "B"), ("dog", "B"), ("It is a red car.", "C"), ("a car", "D"),
    ("The picture shows something", None), ("E", None), ("", None),
]


@pytest.mark.parametrize("response,want", CHOICES)
def test_extract_choice(response, want):
    assert extract_choice(response, OPTIONS) == want


def test_choice_accuracy_gold_letter_or_text():
    assert choice_accuracy("(C)", ["C"], OPTIONS) == 1.0
    assert choice_accuracy("(C)", ["red car"], OPTIONS) == 1.0
    assert choice_accuracy("the dog", ["A"], OPTIONS) == 0.0
    assert choice_accuracy("nothing", ["A"], OPTIONS) == 0.0
    assert choice_accuracy(None, ["A"], OPTIONS) == 0.0


def test_aggregate_binary_uses_wilson():
    agg = aggregate([1.0, 0.0, 1.0, 1.0], errors=1)
    assert (agg.value, agg.n, agg.errors) == (0.75, 4, 1)
    assert (agg.ci_low, agg.ci_high) == pytest.approx(wilson(3, 4))
    low, high = wilson(0, 10)  # 0/10: still an interval above zero
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


def test_aggregate_fractional_uses_normal_interval():
    scores = [0.3, 0.6, 0.9, 1.0, 0.0]
    agg = aggregate(scores)
    mean = sum(scores) / 5
    sd = (sum((s - mean) ** 2 for s in scores) / 4) ** 0.5
    assert agg.value == pytest.approx(mean)
    assert agg.ci_high - agg.value == pytest.approx(1.959964 * sd / 5**0.5, abs=1e-6)
    shifted = aggregate(scores, corpus=0.25)
    assert shifted.value == 0.25 and shifted.ci_high - 0.25 == pytest.approx(agg.ci_high - agg.value)


def test_metrics_import_neither_ray_nor_torch():
    """DESIGN.md: metrics are pure functions; scoring must not need a Ray or torch install."""
    import subprocess
    import sys

    code = ("import sys, pipeline.eval.metrics, pipeline.eval.score; "
            "bad = [m for m in ('ray', 'torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
