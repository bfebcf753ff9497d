"""Evaluation metrics: pure Python functions (no ray, no torch, no Java, no network).

Contract: `METRICS[name]` is a `Metric` whose `score(predictions, answers, options)` takes one prediction
per row (None for an error row), the row's reference answers (a list of strings) and the row's
multiple-choice options (a list, or None), and returns `(per-row scores, corpus value or None)`. Rows are
scored together because CIDEr-D's document frequencies and corpus BLEU depend on the whole set.
Caption metrics tokenise predictions and references first (`captions.tokenize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.eval.metrics import answers as _answers
from pipeline.eval.metrics import captions as _captions
from pipeline.eval.metrics.aggregate import Aggregate, aggregate
from pipeline.eval.metrics.choice import choice_accuracy, extract_choice
from pipeline.eval.metrics.vqa import normalize_answer, vqa_accuracy

Scores = tuple[list[float], float | None]


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[Sequence[str | None], Sequence[list[str]], Sequence[list[str] | None]], Scores]
    needs_options: bool = False


def _per_row(fn: Callable[[str | None, list[str]], float]):
    def score(preds, answers, options) -> Scores:
        return [fn(p, list(a or [])) for p, a in zip(preds, answers, strict=True)], None
    return score


def _choice(preds, answers, options) -> Scores:
    """Rows without options (MMMU's open questions) are scored by exact match."""
    rows = []
    for p, a, o in zip(preds, answers, options, strict=True):
        rows.append(choice_accuracy(p, list(a or []), list(o)) if o else _answers.exact_match(p, list(a or [])))
    return rows, None


def _caption(fn, corpus: bool):
    def score(preds, answers, options) -> Scores:
        hyp = [_captions.tokenize(p) for p in preds]
        refs = [[_captions.tokenize(r) for r in (a or [])] or [""] for a in answers]
        value, rows = fn(hyp, refs)
        # An error row has no caption: it scores 0, whatever the smoothing would give an empty string.
        rows = [0.0 if p is None else s for p, s in zip(preds, rows, strict=True)]
        return rows, (value if corpus else None)
    return score


METRICS: dict[str, Metric] = {
    "vqa_accuracy": Metric("vqa_accuracy", _per_row(vqa_accuracy)),
    "exact_match": Metric("exact_match", _per_row(_answers.exact_match)),
    "anls": Metric("anls", _per_row(_answers.anls)),
    "relaxed_accuracy": Metric("relaxed_accuracy", _per_row(_answers.relaxed_accuracy)),
    "choice_accuracy": Metric("choice_accuracy", _choice, needs_options=True),
    "bleu4": Metric("bleu4", _caption(_captions.bleu, corpus=True)),
    "rouge_l": Metric("rouge_l", _caption(_captions.rouge_l, corpus=False)),
    "cider_d": Metric("cider_d", _caption(_captions.cider_d, corpus=False)),
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(sorted(METRICS))})") from None


__all__ = ["METRICS", "Aggregate", "Metric", "aggregate", "extract_choice", "get_metric", "normalize_answer"]
