"""BLEU-4, ROUGE-L and CIDEr-D against pycocoevalcap's Python scorers (test-only oracle) on pre-tokenised
captions, to 1e-6; the PTB-like tokeniser on hand cases; the registry's error-row handling."""

from __future__ import annotations

import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from pipeline.eval.metrics import get_metric
from pipeline.eval.metrics.captions import bleu, cider_d, rouge_l, tokenize

WORDS = ["a", "man", "woman", "dog", "cat", "riding", "sitting", "on", "the", "of", "with", "red", "blue", "bike",
         "horse", "street", "park", "table", "two", "plate"]


def corpus(seed: int, rows: int = 25) -> tuple[list[str], list[list[str]]]:
    """Random captions over a small vocabulary, so n-grams of every order overlap sometimes."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))

    preds = [sentence() for _ in range(rows)]
    refs = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(rows)]
    preds[0] = refs[0][0]  # one exact hit
    return preds, refs


def as_coco(preds, refs):
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    return gts, res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_matches_pycocoevalcap(seed):
    preds, refs = corpus(seed)
    gts, res = as_coco(preds, refs)
    want, want_rows = Bleu(4).compute_score(gts, res, verbose=0)
    got, got_rows = bleu(preds, refs)
    assert got == pytest.approx(want[3], abs=1e-6)
    assert got_rows == pytest.approx(want_rows[3], abs=1e-6)
    assert 0 < got < 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rouge_matches_pycocoevalcap(seed):
    preds, refs = corpus(seed)
    want, want_rows = Rouge().compute_score(*as_coco(preds, refs))
    got, got_rows = rouge_l(preds, refs)
    assert got == pytest.approx(float(want), abs=1e-6)
    assert got_rows == pytest.approx(list(want_rows), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_matches_pycocoevalcap(seed):
    preds, refs = corpus(seed)
    want, want_rows = Cider().compute_score(*as_coco(preds, refs))
    got, got_rows = cider_d(preds, refs)
    assert got == pytest.approx(float(want), abs=1e-6)
    assert got_rows == pytest.approx(list(want_rows), abs=1e-6)
    assert max(got_rows) > 0


def test_bleu_brevity_and_hand_case():
    # identical 4-word caption: every precision is 1 and lengths match
    assert bleu(["a b c d"], [["a b c d"]])[0] == pytest.approx(1.0, abs=1e-6)
    # half the length of the reference: BP = exp(1 - 8/4) for a perfect prefix
    got = bleu(["a b c d"], [["a b c d e f g h"]])[0]
    assert got == pytest.approx(2.718281828 ** (1 - 2), abs=1e-6)


@pytest.mark.parametrize("raw,want", [
    ("A man's hat.", "a man 's hat"),
    ("Two dogs, playing in the U.S. park!", "two dogs playing in the u.s. park"),
    ("I can't see (it).", "i ca n't see it"),
    ("A t-shirt costs 1,000 dollars... really?", "a t-shirt costs 1,000 dollars really"),
    ('"Quoted" words', "quoted words"),
    ("pi is 3.5.", "pi is 3.5"),
    ("They're here; we've gone: OK", "they 're here we 've gone ok"),
    ("dogs' toys", "dogs toys"),
    ("", ""),
])
def test_tokenize(raw, want):
    assert tokenize(raw) == want


def test_registry_tokenises_and_zeroes_error_rows():
    metric = get_metric("cider_d")
    preds = ["A dog on a bike.", None, "Two cats."]
    refs = [["a dog riding a bike"], ["a red table"], ["two cats sitting"]]
    rows, corpus_value = metric.score(preds, refs, [None] * 3)
    assert rows[1] == 0.0 and rows[0] > 0 and rows[2] > 0 and corpus_value is None
    rows, corpus_value = get_metric("bleu4").score(preds, refs, [None] * 3)
    assert corpus_value is not None and rows[1] == 0.0
