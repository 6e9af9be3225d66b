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
import threading
from typing import Any

from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import BaseSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from pydantic import PrivateAttr

from guide_engine import escape_tags

__all__ = ["EndUserTexts"]

_install_lock = threading.Lock()


def _text(message: Any) -> str:
    content = getattr(message, "content", message)
    return content if isinstance(content, str) else ""


class EndUserTexts(BaseSpanHandler[BaseSpan]):
    """Remembers what the end user of each open chat engine call typed (the texts with tag markers)."""

    _parents: dict[str, str | None] = PrivateAttr(default_factory=dict)
    _texts: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)
    _state_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "GuideEndUserTexts"

    @classmethod
    def install(cls) -> EndUserTexts:
        """Add one handler to the root dispatcher (once per process) and return it."""
        root = get_dispatcher()
        with _install_lock:
            for handler in root.span_handlers:
                if isinstance(handler, cls):
                    return handler
            handler = cls()
            root.add_span_handler(handler)
            return handler

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

    # BaseSpanHandler's abstract hooks: this handler keeps no span objects.
    def new_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
        return None
