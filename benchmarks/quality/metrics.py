"""Scoring one output: is it French, is it degenerate, does it contain the needle's code."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+")

DEGENERATE_NGRAM = 3
DEGENERATE_RATIO = 0.5


def language(text: str) -> str | None:
    """The language langdetect finds (``"fr"``, ``"en"``…), deterministic; ``None`` when it finds none.

    ``DetectorFactory.seed = 0`` makes langdetect's sampling repeatable.
    """
    try:
        from langdetect import DetectorFactory, LangDetectException, detect
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'the quality benchmark needs langdetect; install it with `pip install -e ".[quality]"`'
        ) from error
    DetectorFactory.seed = 0
    if not _WORD.search(text):
        return None
    try:
        return detect(text)
    except LangDetectException:
        return None


def is_french(text: str) -> bool:
    """Whether langdetect reads ``text`` as French."""
    return language(text) == "fr"


def repeated_ngram_ratio(text: str, n: int = DEGENERATE_NGRAM) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier n-gram of the same text.

    Words are ``\\w+`` runs, lower-cased. 0 for a text with no repetition (or fewer than ``n``
    words); a loop such as "la la la la" approaches 1.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_degenerate(text: str, n: int = DEGENERATE_NGRAM, threshold: float = DEGENERATE_RATIO) -> bool:
    """Degenerate output: no word at all, or at least ``threshold`` of its word n-grams are repeats.

    With the defaults (3-grams, 0.5) a 40-token answer is degenerate when half of its word
    trigrams already occurred earlier in it: a loop, not a summary.
    """
    if not _WORD.search(text):
        return True
    return repeated_ngram_ratio(text, n) >= threshold


def contains_code(text: str, code: str) -> bool:
    """Exact match for the needle task: ``code`` appears in ``text`` as a whole number."""
    return code in _NUMBER.findall(text)
