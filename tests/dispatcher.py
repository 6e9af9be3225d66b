"""LlamaIndex event handlers on the root dispatcher for the length of a block, for the LlamaIndex tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llama_index.core.instrumentation import get_dispatcher


@contextmanager
def on_root_dispatcher(*handlers: Any) -> Iterator[None]:
    """Add ``handlers`` to LlamaIndex's root dispatcher; remove them afterwards, also when the block fails."""
    root = get_dispatcher()
    for handler in handlers:
        root.add_event_handler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.event_handlers.remove(handler)
