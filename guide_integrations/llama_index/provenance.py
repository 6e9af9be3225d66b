"""Which text in an LLM call was typed by an end user: the chat engine span above the call knows.

A LlamaIndex chat engine hands ``GuideLLM`` prompts it assembled itself: the condense step of
``condense_plus_context`` formats the history and the new message into one string and calls
``complete``; the ``context`` engine turns its memory into chat messages. The end user's words
sit in those prompts next to the developer's tags, and nothing marks them — except the chat
engine's own span: LlamaIndex opens one for every ``chat``/``achat``/``stream_chat`` call
(``DispatcherSpanMixin``), with the message as an argument and the engine (and its memory) as
the instance.

:class:`EndUserTexts` is a span handler on the root dispatcher that remembers, per open chat
engine span, the texts of its user: the new message, the ``chat_history`` argument and the
messages in its memory. ``GuideLLM`` looks up the chain of spans above its own call and escapes
those texts wherever they appear (:func:`~guide_integrations.llama_index.messages.escape_end_user_texts`).
Only texts that hold a tag marker are kept: every other text reads the same escaped.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from llama_index.core.chat_engine.types import BaseChatEngine
from pydantic import PrivateAttr

from guide_engine import escape_tags

from .span_handlers import RootSpanHandler

__all__ = ["EndUserTexts"]


def _text(message: Any) -> str:
    content = getattr(message, "content", message)
    return content if isinstance(content, str) else ""


class EndUserTexts(RootSpanHandler):
    """Remembers what the end user of each open chat engine call typed (the texts with tag markers)."""

    _texts: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "GuideEndUserTexts"

    def texts_above(self, span_id: str | None) -> tuple[str, ...]:
        """The end-user texts of every chat engine call that ``span_id`` runs inside (empty outside any)."""
        found: list[str] = []
        seen = set()
        with self._state_lock:
            while span_id is not None and span_id not in seen:
                seen.add(span_id)
                found.extend(self._texts.get(span_id, ()))
                span_id = self._parents.get(span_id)
        return tuple(dict.fromkeys(found))

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the span's parent and, for a chat engine call, its user's texts."""
        texts: tuple[str, ...] = ()
        if isinstance(instance, BaseChatEngine):
            arguments = bound_args.arguments
            candidates = [_text(arguments.get("message"))]
            candidates += [_text(m) for m in arguments.get("chat_history") or ()]
            with contextlib.suppress(Exception):  # an engine without a readable memory: the arguments suffice
                candidates += [_text(m) for m in instance.chat_history]
            texts = tuple(t for t in dict.fromkeys(candidates) if t and escape_tags(t) != t)
        with self._state_lock:
            self._parents[id_] = parent_id
            if texts:
                self._texts[id_] = texts

    def span_exit(
        self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None, result: Any = None, **kwargs: Any
    ) -> None:
        """Forget the span."""
        self._forget(id_)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget a span that raised."""
        self._forget(id_)

    def _forget(self, id_: str) -> None:
        with self._state_lock:
            self._parents.pop(id_, None)
            self._texts.pop(id_, None)
