"""A span handler on LlamaIndex's root dispatcher that tracks span parents and keeps no span objects.

:class:`~guide_integrations.llama_index.events.ResponseAnnotator` and
:class:`~guide_integrations.llama_index.provenance.EndUserTexts` both follow spans from a
``GuideLLM`` call up to the query or chat engine above it; this base holds what they share.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import BaseSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from pydantic import PrivateAttr

__all__ = ["RootSpanHandler"]

_install_lock = threading.Lock()
Handler = TypeVar("Handler", bound="RootSpanHandler")


class RootSpanHandler(BaseSpanHandler[BaseSpan]):
    """Installed once per process on the root dispatcher; remembers each open span's parent."""

    _parents: dict[str, str | None] = PrivateAttr(default_factory=dict)
    _state_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def install(cls: type[Handler]) -> Handler:
        """Add one handler of this class to the root dispatcher (once per process) and return it."""
        root = get_dispatcher()
        with _install_lock:
            for handler in root.span_handlers:
                if isinstance(handler, cls):
                    return handler
            handler = cls()
            root.add_span_handler(handler)
            return handler

    # BaseSpanHandler's abstract hooks: these handlers keep no span objects.
    def new_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
        return None
