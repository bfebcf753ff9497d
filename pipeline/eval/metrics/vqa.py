"""VQA accuracy with the official answer normalisation (VQA v2 evaluation, as lmms-eval applies it).

Contract: `vqa_accuracy(prediction, answers) -> float in [0, 1]`, pure (no I/O), deterministic.
`normalize_answer(text)` is the full processing applied to a prediction.

Rules (read from the official `vqaEval.py` and lmms-eval's `EvalAIAnswerProcessor`; written here anew):
- newlines/tabs -> spaces, surrounding whitespace stripped, lower-cased;
- punctuation: each of `; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !` is deleted when it touches a space
  in the text or the text contains a digit-comma-digit group ("1,000"), and replaced by a space otherwise
  ("t-shirt" -> "t shirt"; "yes, it is" -> "yes it is"). The apostrophe is not in the list;
- periods not followed by a digit are deleted ("3.5" keeps its point). Quirk kept: the official call passes
  `re.UNICODE` as the *count* argument, so at most 32 periods are deleted;
- number words zero..ten (and "none") -> digits, the articles a/an/the dropped, and apostrophe-less
  contractions restored ("dont" -> "don't"), word by word;
- accuracy = mean over the human answers of min(#other answers equal to the prediction / 3, 1)
  (leave-one-out: each answer is held out once, by position).
Quirk kept from the official scorer: the human answers are normalised only when they are not all identical
(VQA's released answers are already normalised, so a unanimous answer is compared as written, after strip
and case folding). The prediction is always normalised, as the EvalAI server and lmms-eval do.
"""

from __future__ import annotations

import re

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official lookbehind typo makes it a no-op lookahead
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}


def _contractions() -> dict[str, str]:
    """The official table maps apostrophe-less spellings to the contraction. Built from stems here; the
    handful of irregular entries of the official table are listed as they are (including its reversed
    "somebody'd" -> "somebodyd" entry)."""
    table: dict[str, str] = {}
    simple = ("ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd "
              "how'll how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock "
              "oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's "
              "something'd something'll that's there'd there're there's they'd they'll they're they've wasn't "
              "we've weren't what'll what're what's what've when's where'd where's where've who'd who'll who's "
              "who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've")
    for word in simple.split():
        table[word.replace("'", "")] = word
    # Double contractions: the official table lists each spelling with exactly one apostrophe left out.
    for word in ("couldn't've", "hadn't've", "he'd've", "it'd've", "mightn't've", "she'd've", "shouldn't've",
                 "somebody'd've", "someone'd've", "something'd've", "there'd've", "they'd've", "we'd've",
                 "who'd've", "wouldn't've", "you'd've", "y'all'd've"):
        for i, ch in enumerate(word):
            if ch == "'":
                table[word[:i] + word[i + 1:]] = word
    table.update({"hed": "he'd", "let's": "let's", "she's": "she's", "twas": "'twas", "yall'll": "y'all'll",
                  "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
                  "somebody'd": "somebodyd", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at"})
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    out = text
    delete = _COMMA_IN_NUMBER.search(text) is not None
    for p in _PUNCT:
        # The test looks at the original text for every symbol (official behaviour), not at `out`.
        gone = delete or (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if gone else " ")
    return _PERIOD.sub("", out, count=32)


def process_digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """What the scorer compares for a prediction."""
    return process_digits_articles(process_punctuation(_clean(text).lower()))


def vqa_accuracy(prediction: str | None, answers: list[str]) -> float:
    """Leave-one-out VQA accuracy of one prediction against the human answers (usually 10)."""
    if prediction is None or not answers:
        return 0.0
    gts = [_clean(a) for a in answers]
    pred = normalize_answer(prediction)
    if len(set(gts)) > 1:
        gts = [process_digits_articles(process_punctuation(a)) for a in gts]
    gts = [a.lower() for a in gts]
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)
