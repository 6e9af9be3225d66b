"""Influence as a LangChain callback event, and a handler that collects it.

When a prompt has an ``<?-> … <-?>`` span, ChatGuide measures it and sends
``InfluenceResult.to_dict()`` (plain lists and floats) as the custom event ``"guide_influence"``
of the chat-model run: every callback handler of that run gets ``on_custom_event``, and
``astream_events`` yields an ``on_custom_event`` event with the model run as its source.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.runnables import RunnableConfig

from guide_engine import InfluenceResult

__all__ = ["INFLUENCE_EVENT", "InfluenceCallbackHandler", "RunEvents"]

INFLUENCE_EVENT = "guide_influence"
"""Name of the custom event that carries a measurement."""


@dataclass(frozen=True)
class RunEvents:
    """The handlers of one chat-model run and the run's id: where its influence event goes.

    LangChain hands the run manager to ``_generate`` but not to ``_stream`` when it is called from
    ``stream()``; :meth:`for_new_run` rebuilds the same handlers from the call's config for a run
    id chosen before the run starts.
    """

    run_id: UUID
    handlers: Sequence[BaseCallbackHandler] = field(repr=False)
    parent_run_id: UUID | None = None
    tags: Sequence[str] = ()
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of_run(cls, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun) -> RunEvents:
        """The events of a run that has started."""
        return cls(
            run_id=run_manager.run_id,
            handlers=list(run_manager.handlers),
            parent_run_id=run_manager.parent_run_id,
            tags=list(run_manager.tags),
            metadata=dict(run_manager.metadata),
        )

    @classmethod
    def for_new_run(cls, model: Any, config: RunnableConfig, run_id: UUID) -> RunEvents:
        """The events of the run ``model`` will start with ``config`` under ``run_id``."""
        manager = CallbackManager.configure(
            config.get("callbacks"),
            model.callbacks,
            model.verbose,
            config.get("tags"),
            model.tags,
            config.get("metadata"),
            model.metadata,
        )
        return cls(
            run_id=run_id,
            handlers=list(manager.handlers),
            parent_run_id=manager.parent_run_id,
            tags=list(manager.tags),
            metadata=dict(manager.metadata),
        )

    def emit(self, name: str, data: dict[str, Any]) -> None:
        """Send a custom event to the run's handlers."""
        CallbackManager(
            handlers=list(self.handlers), parent_run_id=self.parent_run_id, tags=list(self.tags), metadata=self.metadata
        ).on_custom_event(name, data, run_id=self.run_id)

    async def aemit(self, name: str, data: dict[str, Any]) -> None:
        """Send a custom event to the run's handlers, from async code."""
        await AsyncCallbackManager(
            handlers=list(self.handlers), parent_run_id=self.parent_run_id, tags=list(self.tags), metadata=self.metadata
        ).on_custom_event(name, data, run_id=self.run_id)


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
