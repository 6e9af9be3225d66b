"""Prompts from outside the author: making values literal, and parsing tags as the engine will.

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guide_engine import TagError, escape_tags, parse_tags
from guide_engine.alignment import parse_message_tags
from guide_engine.tags import ParsedText

__all__ = ["check_message_tags", "escape_untrusted_value", "has_influence_span"]


def escape_untrusted_value(value: Any, escape_object: Callable[[Any], Any] | None = None) -> Any:
    """Escape every tag marker in a value from outside the prompt's author, keeping its shape.

    Strings are escaped with :func:`guide_engine.escape_tags`; lists and tuples are rebuilt item
    by item, mappings become dicts with their values escaped (keys are kept). Any other value is
    handed to ``escape_object`` (how a framework escapes its own document or message types), and
    returned unchanged when there is none: numbers, ``None`` and objects a template consumes
    without printing them pass through. An object whose ``str()`` holds tag markers is *not*
    escaped: turn it into a string first. Escape a string *as a whole* once it is assembled when
    you can: two escaped pieces glued together may form a marker at the seam.
    """
    if isinstance(value, str):
        return escape_tags(value)
    if isinstance(value, Mapping):
        return {key: escape_untrusted_value(item, escape_object) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(escape_untrusted_value(item, escape_object) for item in value)
    return value if escape_object is None else escape_object(value)


def check_message_tags(prompt: str | Sequence[Mapping[str, Any]], hint: str = "") -> list[ParsedText]:
    """The tags of a prompt (a string or ``{"role", "content"}`` messages), parsed as the engine parses them.

    Args:
        prompt: the prompt as the engine will get it.
        hint: appended to a :class:`~guide_engine.TagError`'s message: where the wrapper's user
            can make text literal (``escape_documents``, a template that escapes its variables).

    Raises:
        TagError: for malformed tags, naming the message (its index and role) and ending with ``hint``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about empty spans once, when it parses
        try:
            return [parse_tags(prompt)] if isinstance(prompt, str) else parse_message_tags(prompt)
        except TagError as error:
            if not hint:
                raise
            raise TagError(f"{error}. {hint}", tag=error.tag, position=error.position, snippet=error.snippet) from None


def has_influence_span(prompt: str | Sequence[Mapping[str, Any]]) -> bool:
    """Whether a prompt (a string or ``{"role", "content"}`` messages) has a non-empty ``<?->`` span.

    The tags are parsed as the engine parses them, so an escaped ``<\\?->`` and a span with no
    visible text (which the engine ignores) do not count. Malformed tags raise
    :class:`~guide_engine.TagError` here, before any model runs, as :func:`check_message_tags` does.
    """
    return any(span.kind == "influence" for parsed in check_message_tags(prompt) for span in parsed.spans)
