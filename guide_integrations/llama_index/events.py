"""GUIDE in LlamaIndex's instrumentation: the Influence event, its collector, response metadata.

* :class:`InfluenceEvent` is dispatched by :class:`~guide_integrations.llama_index.GuideLLM`
  inside the span of the LLM call that measured it; its payload is
  :meth:`guide_engine.InfluenceResult.to_dict`, plain JSON.
* :class:`InfluenceEventHandler` collects those events and rebuilds each payload into an
  :class:`~guide_engine.InfluenceResult` that can plot and export itself.
* :func:`response_fields` writes what one call applied into its response (``additional_kwargs``
  and ``raw["guide"]``, the record below).
* :class:`ResponseAnnotator` is a span handler that copies what each ``GuideLLM`` call applied
  (spans, token counts, the rendered prompt) up the span tree into the ``metadata["guide"]``
  of the query engine response that contains the call. ``GuideLLM`` installs one on the root
  dispatcher; it keeps state only per open span id.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any
from uuid import uuid4

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field, PrivateAttr

from guide_engine import GenerationResult, InfluenceResult

from ..core import token_usage
from .span_handlers import RootSpanHandler

__all__ = ["GUIDE_METADATA_KEY", "InfluenceEvent", "InfluenceEventHandler", "ResponseAnnotator", "response_fields"]

GUIDE_METADATA_KEY = "guide"
"""Key of the per-call GUIDE records in a query engine response's ``metadata``."""

_QUERY_RESPONSES = (Response, StreamingResponse, AsyncStreamingResponse, PydanticResponse)


class InfluenceEvent(BaseEvent):
    """Influence (or attention rollout) of a prompt's ``<?-> … <-?>`` span, from one LLM call."""

    model: str = Field(description="Model name, as in GuideLLM.metadata.model_name.")
    text: str = Field(description="The generated text the influence covers.")
    influence: dict[str, Any] = Field(
        description="InfluenceResult.to_dict(): JSON-serializable; rebuild with InfluenceResult.from_dict."
    )

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "GuideInfluenceEvent"

    def result(self) -> InfluenceResult:
        """The payload as an :class:`~guide_engine.InfluenceResult` (plot, HTML, tensors)."""
        return InfluenceResult.from_dict(self.influence)


def response_fields(result: GenerationResult, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``additional_kwargs`` and ``raw`` of a finished call's response.

    ``additional_kwargs``: ``spans`` (one dict per applied span), the token counts, ``finish_reason``
    and, when there was some, ``dropped_markup`` (tool-call markup taken out of the text, a call cut
    short included). ``raw``: ``usage`` (what ``TokenCountingHandler`` reads), ``influence`` (the
    payload or ``None``) and the GUIDE record under :data:`GUIDE_METADATA_KEY`, which
    :class:`ResponseAnnotator` carries up to the query engine response.
    """
    spans = [s.to_dict() for s in result.spans]
    usage = token_usage(result)
    dropped = {"dropped_markup": list(result.dropped_markup)} if result.dropped_markup else {}
    additional_kwargs = {"spans": spans, **usage, "finish_reason": result.finish_reason, **dropped}
    record = {"id": str(uuid4()), "model": model, **additional_kwargs, "prompt_text": result.prompt_text}
    influence = result.influence.to_dict() if result.influence is not None else None
    return additional_kwargs, {GUIDE_METADATA_KEY: record, "usage": usage, "influence": influence}


class InfluenceEventHandler(BaseEventHandler):
    """Collects :class:`InfluenceEvent` payloads as :class:`~guide_engine.InfluenceResult` objects.

    Example:
        >>> from llama_index.core.instrumentation import get_dispatcher
        >>> handler = InfluenceEventHandler()
        >>> get_dispatcher().add_event_handler(handler)      # the root dispatcher sees every event
        >>> engine.query("...")                              # with GuideLLM(metric="influence")
        >>> handler.results[-1].plot("influence.png")
    """

    events: list[InfluenceEvent] = Field(default_factory=list, description="The events, in arrival order.")
    _results: list[InfluenceResult] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "InfluenceEventHandler"

    @property
    def results(self) -> list[InfluenceResult]:
        """One :class:`~guide_engine.InfluenceResult` per event, rebuilt from its payload, in order."""
        return self._results

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Keep influence events; ignore every other event."""
        if isinstance(event, InfluenceEvent):
            result = event.result()
            with self._lock:  # events[i] and results[i] stay paired across threads
                self._results.append(result)
                self.events.append(event)

    def clear(self) -> None:
        """Forget the collected events."""
        with self._lock:
            self.events.clear()
            self._results.clear()


class ResponseAnnotator(RootSpanHandler):
    """Puts each ``GuideLLM`` call's record into the ``metadata`` of the response that contains it.

    A record travels from the span of the LLM call (``chat``, ``complete``, ``achat`` …) up to
    its parent spans as they exit; every query engine response met on the way gets all records
    gathered so far under ``metadata["guide"]`` (a list, one dict per call, in call order).
    Streaming responses are returned before their LLM call runs, so they get no records; use
    the ``LLMChatEndEvent`` / ``LLMCompletionEndEvent`` responses (``raw``) for those.
    """

    _records: dict[str, list[dict[str, Any]]] = PrivateAttr(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "GuideResponseAnnotator"

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the span's parent."""
        with self._state_lock:
            self._parents[id_] = parent_id

    def span_exit(
        self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None, result: Any = None, **kwargs: Any
    ) -> None:
        """Collect the span's records, annotate a response, hand the records to the parent."""
        with self._state_lock:
            parent = self._parents.pop(id_, None)
            records = self._records.pop(id_, [])
        record = _guide_record(result)
        if record is not None and all(r.get("id") != record.get("id") for r in records):
            records.append(record)
        if not records:
            return
        if isinstance(result, _QUERY_RESPONSES):
            if result.metadata is None:
                result.metadata = {}
            result.metadata[GUIDE_METADATA_KEY] = list(records)
        with self._state_lock:
            if parent is not None and parent in self._parents:  # a parent that already exited gets nothing
                self._records.setdefault(parent, []).extend(records)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget a span that raised."""
        with self._state_lock:
            self._parents.pop(id_, None)
            self._records.pop(id_, None)


def _guide_record(result: Any) -> dict[str, Any] | None:
    """The GUIDE record of a GuideLLM response (``raw["guide"]``), or None for anything else."""
    if not isinstance(result, (ChatResponse, CompletionResponse)) or not isinstance(result.raw, dict):
        return None
    record = result.raw.get(GUIDE_METADATA_KEY)
    return dict(record) if isinstance(record, dict) else None
