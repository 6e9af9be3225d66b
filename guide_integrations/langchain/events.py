"""Influence as a LangChain callback event, and a handler that collects it.

When a prompt has an ``<?-> … <-?>`` span, ChatGuide measures it and sends
``InfluenceResult.to_dict()`` (plain lists and floats) as the custom event ``"guide_influence"``
of the chat-model run: every callback handler of that run gets ``on_custom_event``, and
``astream_events`` yields an ``on_custom_event`` event with the model run as its source.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from guide_engine import InfluenceResult

__all__ = ["INFLUENCE_EVENT", "InfluenceCallbackHandler"]

INFLUENCE_EVENT = "guide_influence"
"""Name of the custom event that carries a measurement."""


class InfluenceCallbackHandler(BaseCallbackHandler):
    """Collects the Influence measurements of ChatGuide calls.

    Each ``"guide_influence"`` event becomes an :class:`~guide_engine.InfluenceResult` (it can
    ``plot(path)``, ``to_html(path)`` and ``to_dict()``), appended to :attr:`reports`; the id of
    the chat-model run that produced it is appended to :attr:`run_ids` at the same index.

    Example:
        >>> handler = InfluenceCallbackHandler()
        >>> llm.invoke("<?-> Summarize in French: <-?> ...", config={"callbacks": [handler]})
        >>> handler.reports[-1].plot("influence.png")
    """

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[InfluenceResult] = []
        self.run_ids: list[UUID] = []
        self._lock = threading.Lock()

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep a ``"guide_influence"`` event; ignore every other event."""
        if name != INFLUENCE_EVENT:
            return
        report = InfluenceResult.from_dict(data)
        with self._lock:
            self.reports.append(report)
            self.run_ids.append(run_id)
