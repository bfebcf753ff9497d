"""Caption metrics: PTB-like tokenisation, BLEU-4, ROUGE-L and CIDEr-D, as the COCO caption scorers compute
them (read from `pycocoevalcap`'s Python scorers, which the tests use as an oracle; written here anew).

Contract: `tokenize(text) -> str` (space-joined tokens); the scorers take tokenised predictions (one
string per row) and tokenised references (a list per row) and return (corpus score, per-row scores).
Pure Python, no Java: the official pipeline runs Stanford's Java PTBTokenizer; `tokenize` imitates what
matters for scoring (lower case, punctuation split off and dropped, clitics such as "'s" and "n't" split).

Quirks of the official scorers kept (so numbers compare with published ones):
- BLEU: corpus BLEU over summed n-gram counts, the "closest" reference length per row, 1e-15/1e-9 added to
  every numerator/denominator (so a row without any 4-gram match is ~0, not an error); the per-row
  scores use the same smoothing.
- ROUGE-L: tokens split on single spaces; max precision and max recall are taken over the references
  separately and combined with beta = 1.2.
- CIDEr-D: document frequencies from the references of the scored set itself (so a row's score depends
  on the other rows); the length penalty uses the *bigram* count as the length (`if n == 1` in the
  official code); clipped tf-idf products; x10; sigma = 6.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_DROP = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
         '"', "(", ")", "[", "]", "{", "}"}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT = re.compile(r"(\.\.\.|--|[\"()\[\]{};:!?,`]|'')")
_ABBREV = re.compile(r"^([a-z]\.)+$")
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m", "n't")


def tokenize(text: str | None) -> str:
    """Lower-cased, punctuation split off and dropped, clitics split ("dog's" -> "dog 's", "can't" ->
    "ca n't"); hyphens, abbreviations, decimals and digit commas stay inside words ("t-shirt", "u.s.",
    "3.5", "1,000")."""
    if not text:
        return ""
    out: list[str] = []
    for chunk in text.lower().replace("\u2019", "'").split():
        chunk = re.sub(r"(\d),(?=\d)", "\\1\0", chunk)  # protect digit commas while splitting
        for piece in _SPLIT.split(chunk):
            piece = piece.replace("\0", ",")
            # A final period ends the sentence unless the word is an abbreviation ("u.s.", "e.g.").
            tail = []
            if len(piece) > 1 and piece.endswith(".") and not _ABBREV.match(piece):
                piece, tail = piece.rstrip("."), ["."]
            if piece not in _CLITICS:
                piece = piece.strip("'")  # quotes around a word
            m = _CLITIC.match(piece)
            out.extend([m.group(1), m.group(2)] if m else [piece])
            out.extend(tail)
    return " ".join(t for t in out if t and t not in _DROP)


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu(predictions: list[str], references: list[list[str]], n: int = 4) -> tuple[float, list[float]]:
    """BLEU-n (default 4) of tokenised strings: (corpus score, per-row scores)."""
    tiny, small = 1e-15, 1e-9
    total_guess, total_correct = [0] * n, [0] * n
    total_test = total_ref = 0
    rows = []
    for pred, refs in zip(predictions, references, strict=True):
        words = pred.split()
        counts = _ngrams(words, n)
        max_ref: Counter = Counter()
        lengths = []
        for ref in refs:
            ref_words = ref.split()
            lengths.append(len(ref_words))
            for gram, c in _ngrams(ref_words, n).items():
                max_ref[gram] = max(max_ref[gram], c)
        test_len = len(words)
        ref_len = min((abs(length - test_len), length) for length in lengths)[1]  # "closest", shorter on ties
        guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for gram, c in counts.items():
            correct[len(gram) - 1] += min(max_ref.get(gram, 0), c)
        rows.append(_bleu_from_counts(correct, guess, test_len, ref_len, n, tiny, small))
        total_test, total_ref = total_test + test_len, total_ref + ref_len
        total_guess = [a + b for a, b in zip(total_guess, guess, strict=True)]
        total_correct = [a + b for a, b in zip(total_correct, correct, strict=True)]
    corpus = _bleu_from_counts(total_correct, total_guess, total_test, total_ref, n, tiny, small)
    return corpus, rows


def _bleu_from_counts(correct, guess, test_len, ref_len, n, tiny, small) -> float:
    product = 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
    score = product ** (1.0 / n)
    ratio = (test_len + tiny) / (ref_len + small)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(predictions: list[str], references: list[list[str]], beta: float = 1.2) -> tuple[float, list[float]]:
    """ROUGE-L F-measure per row and its mean."""
    rows = []
    for pred, refs in zip(predictions, references, strict=True):
        cand = pred.split(" ")
        precision, recall = [], []
        for ref in refs:
            ref_tokens = ref.split(" ")
            common = _lcs(ref_tokens, cand)
            precision.append(common / len(cand))
            recall.append(common / len(ref_tokens))
        p, r = max(precision), max(recall)
        rows.append((1 + beta**2) * p * r / (r + beta**2 * p) if p and r else 0.0)
    return (sum(rows) / len(rows) if rows else 0.0), rows


def cider_d(predictions: list[str], references: list[list[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D per row and its mean; document frequencies come from these references."""
    ref_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_counts:
        df.update({gram for counts in refs for gram in counts})
    log_n = math.log(float(len(references))) if references else 0.0

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            weight = tf * (log_n - math.log(max(1.0, df[gram])))
            vec[k][gram] = weight
            norm[k] += weight * weight
            if k == 1:  # official quirk: the "length" is the number of bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    rows = []
    for pred, refs in zip(predictions, ref_counts, strict=True):
        vec, norm, length = vector(_ngrams(pred.split(), n))
        total = [0.0] * n
        for ref in refs:
            vec_r, norm_r, length_r = vector(ref)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                value = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] != 0 and norm_r[k] != 0:
                    value /= norm[k] * norm_r[k]
                total[k] += value * penalty
        rows.append(sum(total) / n / len(refs) * 10.0)
    return (sum(rows) / len(rows) if rows else 0.0), rows
