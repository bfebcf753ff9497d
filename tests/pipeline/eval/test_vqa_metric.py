"""VQA accuracy: the official normalisation rule by rule, and the leave-one-out average, on hand-computed
cases (each expected value follows from the rules in pipeline/eval/metrics/vqa.py's docstring)."""

from __future__ import annotations

import pytest

from pipeline.eval.metrics.vqa import (
    CONTRACTIONS,
    normalize_answer,
    process_digits_articles,
    process_punctuation,
    vqa_accuracy,
)

# (prediction as the model wrote it, what the scorer compares)
NORMALISATION = [
    ("Yes", "yes"),
    ("  yes\n", "yes"),
    ("yes\tsir", "yes sir"),
    ("Two", "2"),
    ("none", "0"),
    ("ten apples", "10 apples"),
    ("eleven", "eleven"),  # only zero..ten are mapped
    ("a dog", "dog"),
    ("The Cat", "cat"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("couldnt've", "couldn't've"),
    ("im", "im"),  # the official table's "Im" key is capitalised, so never matches lower-cased text
    ("t-shirt", "t shirt"),  # no space next to '-': replaced by a space
    ("yes, it is", "yes it is"),  # ', ' touches a space: deleted
    ("1,000", "1000"),  # digit,digit: every listed symbol is deleted
    ("3.5", "3.5"),  # a period before a digit stays
    ("end.", "end"),
    ("red/blue", "red blue"),
    ("(left)", "left"),
    ("what?", "what"),
    ("@home", "home"),
    ("dog's", "dog's"),  # the apostrophe is not punctuation here
    ("snow board!", "snow board"),
]


@pytest.mark.parametrize("raw,want", NORMALISATION)
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


def test_punctuation_checks_the_original_text_for_every_symbol():
    # '-' has no space next to it, but '!' does: each symbol is decided on its own.
    assert process_punctuation("x-ray !") == "x ray "
    # digit,digit anywhere deletes every symbol, even where it would otherwise become a space.
    assert process_punctuation("a-b 1,2") == "ab 12"


def test_period_quirk_at_most_32_deleted():
    text = "." * 40
    assert process_punctuation(text) == "." * 8


def test_contraction_table_has_both_single_apostrophe_spellings_of_doubles():
    assert CONTRACTIONS["wouldnt've"] == CONTRACTIONS["wouldn'tve"] == "wouldn't've"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # the official table's reversed entry, kept
    assert process_digits_articles("A Youre") == "you're"


TEN = ["2"] * 10


@pytest.mark.parametrize("pred,answers,want", [
    ("2", TEN, 1.0),
    ("two", TEN, 1.0),  # the prediction is always normalised
    ("Two.", TEN, 1.0),
    ("3", TEN, 0.0),
    # 1 human said "2": held out, 0 others match (0); held in, 1/3, for the other 9 -> 9 * (1/3) / 10
    ("2", ["2"] + ["3"] * 9, 0.3),
    # 2 said it: those 2 see 1 match (1/3), the other 8 see 2 (2/3) -> (2/3 + 16/3) / 10 = 0.6
    ("2", ["2"] * 2 + ["3"] * 8, 0.6),
    # 3 said it: 3 see 2 (2/3), 7 see 3 (1) -> (2 + 7) / 10 = 0.9
    ("2", ["2"] * 3 + ["3"] * 7, 0.9),
    ("2", ["2"] * 4 + ["3"] * 6, 1.0),
    # non-unanimous answers are normalised too: "two" and "2." both become "2"
    ("2", ["two", "2.", "2"] + ["3"] * 7, 0.9),
    # unanimous answers are compared as written (official quirk): "t-shirt" vs the normalised "t shirt"
    ("t-shirt", ["t-shirt"] * 10, 0.0),
    ("t-shirt", ["t-shirt"] * 9 + ["shirt"], 1.0),
    # ... but case-insensitively
    ("yes", ["Yes"] * 10, 1.0),
    # 3 of 4 match after normalisation: each of those 3 sees 2 others (2/3), "puppy" held out sees 3 (1)
    ("the dog", ["dog", "a dog", "dog", "puppy"], 0.75),
    ("no", [], 0.0),
    (None, TEN, 0.0),
])
def test_vqa_accuracy(pred, answers, want):
    assert vqa_accuracy(pred, answers) == pytest.approx(want)
