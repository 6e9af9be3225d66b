"""Deterministic English texts and the prompts built from them (no model, no download).

Two corpora:

* ``python`` (default): the standard library's ``pydoc_data.topics`` (the Python language
  reference behind ``help()``), so every machine with Python has the same corpus. Only prose
  paragraphs are kept: no indented code, no reST underlines, each paragraph ending with a full stop.
* ``prose``: the project's own non-technical articles and stories — ``examples/data`` and
  ``benchmarks/quality/prose`` — a second corpus that is not technical documentation (issue 21).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from guide_engine.tags import escape_tags

CountTokens = Callable[[str], int]

_UNDERLINE = re.compile(r"[\*=\-~^\s]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
PARAGRAPH_STRIDE = 211  # consecutive samples start this many paragraphs apart (coprime with the count)


@lru_cache(maxsize=1)
def source_paragraphs() -> tuple[str, ...]:
    """Prose paragraphs of ``pydoc_data.topics``, topics in sorted order, whitespace collapsed."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = [line for line in block.split("\n") if line.strip()]
            if not lines or any(line.startswith(" ") for line in lines):
                continue  # code, grammar rules, indented examples
            lines = [line for line in lines if not _UNDERLINE.fullmatch(line)]
            text = " ".join(line.strip() for line in lines)
            text = re.sub(r"\s+", " ", text).strip()
            if len(text.split()) >= 8 and text.endswith("."):
                paragraphs.append(text)
    return tuple(paragraphs)


PROSE_FOLDERS = (
    Path(__file__).resolve().parents[2] / "examples" / "data",
    Path(__file__).resolve().parent / "prose",
)


@lru_cache(maxsize=1)
def prose_paragraphs() -> tuple[str, ...]:
    """Paragraphs of the project's prose corpus, files in sorted order, whitespace collapsed."""
    paragraphs = []
    for path in sorted(p for folder in PROSE_FOLDERS for p in folder.glob("*.txt")):
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            text = re.sub(r"\s+", " ", block).strip()
            if len(text.split()) >= 8:
                paragraphs.append(text)
    return tuple(paragraphs)


def build_context(
    n_tokens: int,
    sample: int,
    count_tokens: CountTokens,
    *,
    salt: int = 0,
    paragraphs: Sequence[str] | None = None,
) -> str:
    """The longest run of consecutive paragraphs (the last one cut at a word) within ``n_tokens``.

    Sample ``s`` starts at paragraph ``(s * PARAGRAPH_STRIDE + salt) mod P`` and wraps around, so
    the same (length, sample, salt) always gives the same text and different samples differ.

    Args:
        n_tokens: token budget, counted by ``count_tokens`` on the whole text.
        sample: sample index (0, 1, …).
        count_tokens: the tokenizer's count of a text (no special tokens).
        salt: offsets the start, so two tasks do not use the same texts.
        paragraphs: the corpus; :func:`source_paragraphs` by default.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    paras = list(paragraphs if paragraphs is not None else source_paragraphs())
    if not paras:
        raise ValueError("the corpus has no paragraphs")
    start = (sample * PARAGRAPH_STRIDE + salt) % len(paras)
    chosen: list[str] = []
    for step in range(len(paras)):
        paragraph = paras[(start + step) % len(paras)]
        if count_tokens("\n\n".join(chosen + [paragraph])) <= n_tokens:
            chosen.append(paragraph)
            continue
        words = paragraph.split(" ")
        lo, hi = 0, len(words)  # the largest prefix of words that still fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens("\n\n".join(chosen + [" ".join(words[:mid])])) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        if lo:
            chosen.append(" ".join(words[:lo]))
        break
    return "\n\n".join(chosen)


def insert_needle(haystack: str, needle: str, depth: float) -> str:
    """Put ``needle`` between two sentences, at the boundary nearest ``depth`` (0–1) of the text.

    Depth 0 puts it before the first sentence, depth 1 after the last one.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be between 0 and 1, got {depth!r}")
    boundaries = [0] + [m.start() for m in _SENTENCE_END.finditer(haystack)] + [len(haystack)]
    target = depth * len(haystack)
    at = min(boundaries, key=lambda b: (abs(b - target), b))
    before, after = haystack[:at].rstrip(), haystack[at:].lstrip()
    return " ".join(part for part in (before, needle, after) if part)


# ------------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """How the instruction (or question, or needle) is presented.

    Attributes:
        name: short label used in tables (``raw``, ``important``, ``upper``, ``guide``).
        delta: Δ of the GUIDE emphasis (0 for the non-GUIDE conditions).
        target: what gets the emphasis: ``"instruction"``, ``"question"`` or ``"needle"``.
    """

    name: str
    delta: float = 0.0
    target: str = "instruction"

    @property
    def label(self) -> str:
        """A unique, readable label: ``raw``, ``upper``, ``guide Δ=2 (needle)``…"""
        if self.name != "guide":
            return self.name
        suffix = "" if self.target == "instruction" else f" ({self.target})"
        return f"guide Δ={self.delta:g}{suffix}"


def emphasize(text: str, delta: float, *, measure: bool = False) -> str:
    """Wrap ``text`` so that it gets exactly Δ = ``delta``.

    With ``measure=False`` it is a level-2 emphasis tag (the request must set ``delta_mid=delta``);
    with ``measure=True`` an influence span (the request sets ``delta_influence=delta``), which
    applies the same bias and also marks the span for Influence.
    """
    return f"<?->{text}<-?>" if measure else f"<!!->{text}<-!!>"


FRENCH_INSTRUCTION = "Summarize this text in French."


def french_prompt(context: str, condition: Condition, position: str, *, measure: bool = False) -> str:
    """The tagged 'summarize in French' prompt; the context is escaped (it is untrusted text).

    Args:
        context: the English text.
        condition: ``raw``, ``important`` ("Important: " prefix), ``upper`` (instruction in
            capitals) or ``guide`` (emphasis on the instruction).
        position: ``"before"`` (instruction, then the context) or ``"after"``.
        measure: mark the instruction as the influence span (see :func:`emphasize`). Every
            condition then has the span, so Influence is comparable across conditions.
    """
    instruction = {
        "raw": FRENCH_INSTRUCTION,
        "important": f"Important: {FRENCH_INSTRUCTION}",
        "upper": FRENCH_INSTRUCTION.upper(),
        "guide": FRENCH_INSTRUCTION,
    }.get(condition.name)
    if instruction is None:
        raise ValueError(f"unknown French condition {condition.name!r}; use raw, important, upper or guide")
    if condition.name == "guide" or measure:
        instruction = emphasize(instruction, condition.delta, measure=measure)
    return _place(instruction, escape_tags(context), position)


NEEDLE_TEMPLATE = "The secret code of the blue door is {code}."
NEEDLE_QUESTION = "What is the secret code of the blue door? Answer with the number only."


def needle_code(sample: int, depth: float, length: int) -> str:
    """A 4-digit code that differs between cells, so the answer cannot be memorized across prompts.

    All conditions of one cell share the code, so they can be compared pair by pair.
    """
    return str(1000 + (sample * 7919 + round(depth * 100) * 104729 + length * 131) % 9000)


def needle_prompt(haystack: str, code: str, depth: float, condition: Condition, position: str) -> str:
    """The haystack with the needle at ``depth`` and the question before or after it.

    ``condition.target`` says what a ``guide`` condition emphasizes: the question or the needle.
    """
    needle = NEEDLE_TEMPLATE.format(code=code)
    question = NEEDLE_QUESTION
    if condition.name == "guide":
        if condition.target == "needle":
            needle = emphasize(needle, condition.delta)
        elif condition.target == "question":
            question = emphasize(question, condition.delta)
        else:
            raise ValueError(f"a needle condition targets 'question' or 'needle', got {condition.target!r}")
    elif condition.name != "raw":
        raise ValueError(f"unknown needle condition {condition.name!r}; use raw or guide")
    text = insert_needle(escape_tags(haystack), "\x00", depth).replace("\x00", needle)
    return _place(question, text, position)


def _place(instruction: str, context: str, position: str) -> str:
    if position == "before":
        return f"{instruction}\n\n{context}"
    if position == "after":
        return f"{context}\n\n{instruction}"
    raise ValueError(f"position must be 'before' or 'after', got {position!r}")
