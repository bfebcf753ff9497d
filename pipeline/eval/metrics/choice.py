"""Multiple-choice answer extraction: a model's free text -> the option letter it chose (or None).

Contract: `extract_choice(response, options) -> "A" | "B" | ... | None`, where `options` are the option
texts in letter order; `choice_accuracy(response, answers, options)` scores it against the gold letter
(or gold option text). Pure and deterministic.

Rules, tried in order (the first that finds something decides):
1. the whole response is a letter, possibly decorated: "B", "(B)", "B.", "[B]", "**B**";
2. a leading letter with a delimiter: "B. cat", "B) cat", "(B) cat", "B: cat", "B - cat";
3. an explicit statement: "answer is B", "Answer: (B)", "correct option is B", "I choose B";
4. a bracketed letter anywhere, "(B)": the last one mentioned;
5. a standalone capital letter among the options ("it is C"), the last one; "A" and "I" followed by a
   lower-case word are read as English ("A cat is...", "I think"), not as options;
6. option text: the response equals an option's text, else options whose text occurs in the response as
   whole words; an option contained in a longer matched option is dropped; the last mentioned wins.
Differences from MMMU's reference parser, on purpose: nothing found gives None (MMMU picks a random
letter, so its scores vary between runs), and rule 5 does not read the article "A" as option A.
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DECOR = " \t\n*_`'\"[](){}<>.,:;!?"
_ANSWER_IS = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|should be|:|=)?\s*(?:option|choice)?\s*[:\-]?\s*[\(\[]?([A-Z])\b"
    r"|\b(?:I\s+(?:choose|pick|select)|I'd\s+(?:choose|pick|go\s+with))\s*[\(\[]?([A-Z])\b",
    re.IGNORECASE)


def _valid(letter: str, n: int) -> bool:
    return len(letter) == 1 and letter.upper() in LETTERS[:n]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_choice(response: str | None, options: list[str]) -> str | None:
    if response is None or not options:
        return None
    n = len(options)
    text = response.strip()
    bare = text.strip(_DECOR)
    if len(bare) == 1 and _valid(bare, n) and bare.isupper():  # 1
        return bare
    lead = re.match(r"^[\s*_\[\(]*([A-Z])\s*(?:[\.\):\]]|\s-\s|$)", text)  # 2
    if lead and _valid(lead.group(1), n):
        return lead.group(1)
    for m in _ANSWER_IS.finditer(text):  # 3
        group = 1 if m.group(1) else 2
        candidate, end = m.group(group), m.end(group)
        # "answer is a cat": a lower-case letter followed by a word is English, not option A.
        english = candidate.islower() and text[m.start(group) - 1] not in "([" and re.match(r"\s*\w", text[end:])
        if _valid(candidate, n) and not english:
            return candidate.upper()
    bracketed = [m.group(1) for m in re.finditer(r"\(([A-Z])\)", text) if _valid(m.group(1), n)]  # 4
    if bracketed:
        return bracketed[-1]
    standalone = []
    for m in re.finditer(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])", text):  # 5
        letter = m.group(1)
        if letter in "AI" and re.match(r"\s+[a-z]", text[m.end():]):
            continue
        if _valid(letter, n):
            standalone.append(letter)
    if standalone:
        return standalone[-1]
    return _by_text(text, options)  # 6


def _by_text(text: str, options: list[str]) -> str | None:
    said = _norm(text)
    texts = [_norm(o) for o in options]
    for i, t in enumerate(texts):
        if t and said == t:
            return LETTERS[i]
    found = {}
    for i, t in enumerate(texts):
        if not t:
            continue
        positions = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(t)}(?!\w)", said)]
        if positions:
            found[i] = positions[-1]
    # "dark red" matched means "red" (inside it) was not the answer.
    for i in list(found):
        if any(j != i and texts[i] != texts[j] and re.search(rf"(?<!\w){re.escape(texts[i])}(?!\w)", texts[j])
               for j in found):
            del found[i]
    if not found:
        return None
    return LETTERS[max(found, key=lambda i: (found[i], len(texts[i])))]


def choice_accuracy(response: str | None, answers: list[str], options: list[str]) -> float:
    """1.0 when the extracted letter is the gold one; a gold answer may be the letter or the option text."""
    chosen = extract_choice(response, options)
    if chosen is None:
        return 0.0
    for gold in answers:
        g = gold.strip().strip("().")
        if (len(g) == 1 and g.upper() == chosen) or (
                _norm(gold) and _norm(gold) == _norm(options[LETTERS.index(chosen)])):
            return 1.0
    return 0.0
