"""Token masks that keep an answer text: a request that may not call tools cannot write a call.

A request may not call tools when it has none, or has ``tool_choice="none"``. Small models trained
on the ``<tool_call>`` format (SmolLM2) still write a call there, most of all after a tool result;
the engine used to take it out of the text, which left the answer empty. These masks forbid the
tokens that would write the markup, as a server honouring ``tool_choice="none"`` does, so the
model answers in words. They need no grammar library: only the text of each token. See
``docs/structured-output.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = ["LINE_START", "MARKUP_STARTS", "MarkupVocabulary", "NoCallMasks", "RowMasks", "markup_state"]

MARKUP_STARTS = (TOOL_CALL_OPEN[:5], TOOL_CALL_CLOSE[:6])
"""What a request that may not call tools never writes: ``"<tool"`` and ``"</tool"``. Shorter would
forbid ordinary text (``"<t"`` is ``"<table>"``); the whole marker would let the model write
``"<tool_call"`` and then only forbid the ``">"``."""

LINE_START = "\n"
"""The state of a :class:`NoCallMasks` row at the start of a line (blanks aside), where calls begin."""


class RowMasks(Protocol):
    """Token masks over the vocabulary, one per row of a decoding loop (what ``decode_steps`` takes):
    :class:`~guide_engine.constraints.TokenMasks` (a grammar) or :class:`NoCallMasks`."""

    def apply(self, logits: torch.Tensor, rows_done: torch.Tensor) -> None:
        """Set the logits ``(batch, vocab)`` of forbidden tokens to ``-inf``, on rows not done."""

    def advance(self, next_ids: torch.Tensor, rows_done: torch.Tensor) -> None:
        """Move each row not done past its chosen token ``next_ids[row]``."""


def markup_state(text: str) -> str:
    """The longest end of ``text`` that is a proper beginning of one of :data:`MARKUP_STARTS`."""
    for length in range(min(len(text), max(map(len, MARKUP_STARTS)) - 1), 0, -1):
        end = text[-length:]
        if any(start.startswith(end) and start != end for start in MARKUP_STARTS):
            return end
    return ""


class MarkupVocabulary:
    """One tokenizer's token texts and, per :class:`NoCallMasks` state, the ids it forbids.

    Both are built on first use, once per engine: decoding SmolLM2's 49k tokens took 0.4 s, and a
    state's scan of them a few milliseconds.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: tuple[str, ...] | None = None
        self._forbidden: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def texts(self) -> tuple[str, ...]:
        """Each token id's text, decoded alone."""
        if self._texts is None:
            with self._lock:
                if self._texts is None:
                    self._texts = tuple(self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))]))
        return self._texts

    def forbidden(self, state: str) -> torch.Tensor:
        """The ids ``(n,)`` whose text, after ``state``, makes the text contain one of
        :data:`MARKUP_STARTS`; at the start of a line (:data:`LINE_START`) also every token, special
        tokens aside, whose text begins with ``"<"`` (blanks aside)."""
        if state not in self._forbidden:
            start, at_line_start = ("", True) if state == LINE_START else (state, False)
            special = set(self.tokenizer.all_special_ids)
            ids = [
                i
                for i, text in enumerate(self.texts())
                if any(marker in start + text for marker in MARKUP_STARTS)
                or (at_line_start and i not in special and text.lstrip().startswith("<"))
            ]
            self._forbidden[state] = torch.tensor(ids, dtype=torch.long)
        return self._forbidden[state]

    def masks(self, prompts_show_calls: Sequence[bool]) -> NoCallMasks:
        """Masks for one decoding loop whose rows may not call tools."""
        return NoCallMasks(self.texts(), self.forbidden, prompts_show_calls)


class NoCallMasks:
    """Rows that may not call tools: decoding cannot write tool-call markup, so the answer is text.

    A token is forbidden when the row's text would then contain one of :data:`MARKUP_STARTS`,
    whichever tokens it is split into (``"<"`` then ``"tool"`` for SmolLM2; a single
    ``<tool_call>`` token, as in Qwen's vocabulary, at once). When the prompt shows the call
    format, no line of the answer may begin with ``"<"`` either (blanks aside), as calls do:
    SmolLM2, after a tool result, stopped only at ``"<tool"``, wrote ``"<user_message>…"`` instead
    of an answer. Each row keeps its state: the end of its text that may begin a marker, or
    :data:`LINE_START`.

    Args:
        texts: each token id's text (:meth:`MarkupVocabulary.texts`).
        forbidden: the ids forbidden in a state (:meth:`MarkupVocabulary.forbidden`).
        prompts_show_calls: per row, whether its prompt shows the call format (``<tool_call>`` in
            the rendered prompt: tools are shown, or calls were made earlier in the conversation).
    """

    def __init__(
        self, texts: Sequence[str], forbidden: Callable[[str], torch.Tensor], prompts_show_calls: Sequence[bool]
    ) -> None:
        self.texts = texts
        self.forbidden = forbidden
        self.line_starts = list(prompts_show_calls)  # per row: "<" is forbidden at the start of a line
        self.states = [LINE_START if shown else "" for shown in prompts_show_calls]

    def apply(self, logits: torch.Tensor, rows_done: torch.Tensor) -> None:
        """Set the logits ``(batch, vocab)`` of the tokens that would write markup to ``-inf``."""
        for row, state in enumerate(self.states):
            if not bool(rows_done[row]):
                ids = self.forbidden(state)
                logits[row, ids[ids < logits.shape[-1]].to(logits.device)] = float("-inf")

    def advance(self, next_ids: torch.Tensor, rows_done: torch.Tensor) -> None:
        """Move each row's state past the text of its chosen token."""
        for row, state in enumerate(self.states):
            token = int(next_ids[row])
            if bool(rows_done[row]) or token >= len(self.texts):
                continue
            text = self.texts[token]
            if self.line_starts[row] and (_ends_a_line(text) or (state == LINE_START and not text.strip())):
                self.states[row] = LINE_START
            else:
                self.states[row] = markup_state(("" if state == LINE_START else state) + text)


def _ends_a_line(text: str) -> bool:
    """Whether ``text`` ends with a line break and blanks at most."""
    return text.rstrip(" \t").endswith("\n")
