"""The tagging rule of the IFEval benchmark: which sentences of a prompt a user would emphasize.

It stands in for the user who tags by hand, and was fixed (with its tests) before any tagged
answer was generated. It is deterministic and reads the prompt only, never the instruction ids:

1. **Sentences.** The prompt is cut at line breaks and after ``.``, ``!`` or ``?`` (with any
   closing quotes or brackets) followed by white space; never inside double quotes or
   parentheses, nor after a one-letter word, a number (``"1."``) or one of :data:`ABBREVIATIONS`.
2. **The task** is the first sentence that does not open like an instruction about the answer
   (:data:`LEADING`: "First repeat the request…", "Wrap your entire response…", "Do not…"); when
   every sentence does, the first one. It is never tagged, even where it also carries an
   instruction ("Write a 300+ word summary of…"): that is the rule's main known miss.
3. **Material** is never tagged: a sentence that starts with a double quote (quoted text to
   rewrite or repeat).
4. **Instructions** are the other sentences in which :data:`CUE` finds a word a constraint on the
   answer's form uses: a reference to the response ("your answer"), a prohibition ("do not"), a
   count ("at least 3", "300 words"), or a formatting word ("lowercase", "comma", "JSON", "title",
   "postscript", "highlight", "placeholder", "bullet"…). Each is wrapped whole, without its
   surrounding white space, in ``<!!-> … <-!!>`` (level 2: Δ = ``delta_mid``).

The text between the tags is the prompt's, escaped with :func:`guide_engine.escape_tags`, so the
model sees exactly the IFEval prompt: ``parse_tags(tag_prompt(p)).text == p`` for every prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN, CLOSE = "<!!->", "<-!!>"

ABBREVIATIONS = frozenset(
    {"i.e", "e.g", "etc", "vs", "mr", "mrs", "ms", "dr", "st", "p.s", "p.p.s", "u.s", "a.m", "p.m"}
)

_NUMBER = (
    r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty"
    r"|hundred)"
)

LEADING = re.compile(
    r"^\W*(?:first,?\s+repeat|before\s+you\s+answer|repeat\b|wrap\b|answer\s+with\b"
    r"|(?:your|the)\s+(?:entire\s+|whole\s+)?(?:response|answer|output|reply)\b"
    r"|in\s+your\s+(?:entire\s+)?(?:response|answer|reply)\b|do\s+not\b|don't\b)",
    re.IGNORECASE,
)
"""How a sentence that is an instruction about the answer, not the task, may open."""

CUE = re.compile(
    r"\b(?:your|the|entire|whole)\s+(?:entire\s+|whole\s+|full\s+)?(?:response|answer|output|reply)s?\b"
    r"|\b(?:do\s+not|don't|never|avoid|refrain|without\s+using|no\s+other)\b"
    rf"|\b(?:at\s+least|at\s+most|less\s+than|fewer\s+than|more\s+than|no\s+more\s+than|exactly)\s+{_NUMBER}\b"
    rf"|\b{_NUMBER}\+?[\s-]*(?:words?|sentences?|paragraphs?|bullet|sections?|placeholders?|times)\b"
    r"|\b(?:lower\s*-?case|upper\s*-?case|capital\w*|all\s+caps|commas?|json|markdown|bullet\s+points?|title"
    r"|angular\s+brackets|quotation\s+marks?|placeholders?|square\s+brackets|postscript|p\.p?\.s"
    r"|highlight\w*|italic\w*|asterisks?|keywords?|the\s+words?|the\s+letter|phrase|word\s+for\s+word"
    r"|language|only\s+in|respond|repeat|separated?|wrap\w*|(?:finish|end|start|begin)\s+(?:your|it|the|each|with)\b)",
    re.IGNORECASE,
)
"""Words that mark a sentence as an instruction about the answer's form."""

_BREAK = re.compile(r"[.!?]+[\"')\]”’]*(?=\s)")


@dataclass(frozen=True)
class Sentence:
    """A sentence of the prompt: ``prompt[start:end]`` (no surrounding white space) and its role."""

    start: int
    end: int
    role: str  # "task", "instruction", "material" or "other"


def _splits(line: str) -> list[int]:
    """Offsets in ``line`` after which a sentence ends."""
    cuts = []
    for match in _BREAK.finditer(line):
        before = line[: match.start()]
        if line[: match.end()].count('"') % 2 or before.count("(") > before.count(")"):
            continue  # inside a quotation (its closing quote counted) or parentheses
        word = re.search(r"(\S+)$", before)
        stem = word.group(1).lower().strip("\"'(") if word else ""
        if match.group().startswith(".") and (len(stem) == 1 or stem.isdigit() or stem in ABBREVIATIONS):
            continue
        cuts.append(match.end())
    return cuts


def sentences(prompt: str) -> list[Sentence]:
    """The prompt's sentences in order, each with its role under the rule."""
    spans: list[tuple[int, int]] = []
    offset = 0
    for line in prompt.split("\n"):
        bounds = [0, *_splits(line), len(line)]
        for a, b in zip(bounds, bounds[1:]):
            piece = line[a:b]
            if piece.strip():
                lead = len(piece) - len(piece.lstrip())
                spans.append((offset + a + lead, offset + a + len(piece.rstrip())))
        offset += len(line) + 1
    texts = [prompt[a:b] for a, b in spans]
    task = next((i for i, text in enumerate(texts) if not LEADING.match(text)), 0)
    result = []
    for i, ((a, b), text) in enumerate(zip(spans, texts)):
        if i == task:
            role = "task"
        elif text.startswith(('"', "“")):
            role = "material"
        elif CUE.search(text):
            role = "instruction"
        else:
            role = "other"
        result.append(Sentence(a, b, role))
    return result


def tag_prompt(prompt: str) -> str:
    """The prompt with each instruction sentence wrapped in ``<!!-> … <-!!>``, the rest escaped."""
    from guide_engine.tags import escape_tags

    pieces, cursor = [], 0
    for sentence in sentences(prompt):
        if sentence.role != "instruction":
            continue
        pieces += [escape_tags(prompt[cursor : sentence.start]), OPEN]
        pieces += [escape_tags(prompt[sentence.start : sentence.end]), CLOSE]
        cursor = sentence.end
    pieces.append(escape_tags(prompt[cursor:]))
    return "".join(pieces)


def untagged_prompt(prompt: str) -> str:
    """The prompt as the engine should read it without emphasis (escaped: no accidental tag)."""
    from guide_engine.tags import escape_tags

    return escape_tags(prompt)
