"""How ``_stream`` reaches its own run: the one place ChatGuide works around LangChain's run plumbing.

ChatGuide sends a measured ``<?->`` span's Influence to the chat-model run as a custom event.
``_generate`` and ``_agenerate`` get the run's callback manager and send it there. But
LangChain's ``BaseChatModel`` calls ``_stream``/``_astream`` *without* the run manager on three
paths, on purpose (the base class handles every token callback itself; langchain-ai/langchain
#23500): ``stream()``, ``astream()``, and ``invoke()``/``ainvoke()`` when they stream
(``streaming=True``, ``astream_events``, LangGraph's ``"messages"`` stream mode). No hook runs
with the run between its start and ``_stream``, so on those paths the run has to be known
before LangChain starts it:

- :class:`RunEvents` is a run's handlers and id, and sends custom events to them with public
  LangChain API (``CallbackManager.on_custom_event``);
- :class:`RunAwareChatModel` overrides ``stream``/``astream`` (it picks the run id, as a caller
  may through ``config["run_id"]``, and rebuilds the run's handlers from the config as LangChain
  will) and ``_generate_with_cache``/``_agenerate_with_cache`` (which hold the run manager), and
  hands the run to ``_stream``/``_astream`` through a context variable, set only while LangChain
  steps the stream. Nothing travels in the call's keywords, so nothing reaches invocation
  params, cache keys or traces; :func:`take_run_events` gives the run to the first ``_stream``
  that asks, once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig, ensure_config

try:  # time-ordered run ids, as LangChain's own (langchain-core >= 1.1)
    from langchain_core.utils.uuid import uuid7 as _new_run_id
except ImportError:  # pragma: no cover
    _new_run_id = uuid.uuid4  # type: ignore[assignment]

__all__ = ["RunAwareChatModel", "RunEvents", "take_run_events"]


@dataclass(frozen=True)
class RunEvents:
    """The handlers of one chat-model run and the run's id: where its custom events go."""

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
    def for_new_run(cls, model: BaseChatModel, config: RunnableConfig, run_id: UUID) -> RunEvents:
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


@dataclass
class _Handover:
    events: RunEvents
    taken: bool = False


_HANDOVER: ContextVar[_Handover | None] = ContextVar("guide_run_handover", default=None)


def take_run_events() -> RunEvents | None:
    """The run whose ``stream``/``invoke`` is calling ``_stream`` now (once), or ``None``."""
    handover = _HANDOVER.get()
    if handover is None or handover.taken:
        return None
    handover.taken = True
    return handover.events


@contextmanager
def _handing_over(handover: _Handover) -> Iterator[None]:
    token = _HANDOVER.set(handover)
    try:
        yield
    finally:
        _HANDOVER.reset(token)


_END = object()


class RunAwareChatModel(BaseChatModel):
    """A ``BaseChatModel`` whose ``_stream``/``_astream`` can find their run (see the module docstring)."""

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """LangChain's ``stream``; ``_stream`` can address the run it streams for."""
        config, handover = self._new_run(config)
        chunks = cast(Generator[AIMessageChunk, None, None], super().stream(input, config, stop=stop, **kwargs))
        try:
            while True:
                with _handing_over(handover):  # only while LangChain steps the stream
                    chunk = next(chunks, _END)
                if chunk is _END:
                    return
                yield chunk  # type: ignore[misc]
        finally:
            chunks.close()

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """LangChain's ``astream``; ``_astream`` can address the run it streams for."""
        config, handover = self._new_run(config)
        chunks = cast(AsyncGenerator[AIMessageChunk, None], super().astream(input, config, stop=stop, **kwargs))
        try:
            while True:
                with _handing_over(handover):
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                yield chunk
        finally:
            await chunks.aclose()

    def _generate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager is None:
            return super()._generate_with_cache(messages, stop=stop, **kwargs)
        with _handing_over(_Handover(RunEvents.of_run(run_manager))):  # `invoke` may go through `_stream`
            return super()._generate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager is None:
            return await super()._agenerate_with_cache(messages, stop=stop, **kwargs)
        with _handing_over(_Handover(RunEvents.of_run(run_manager))):
            return await super()._agenerate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _new_run(self, config: RunnableConfig | None) -> tuple[RunnableConfig, _Handover]:
        config = ensure_config(config)
        run_id = config.get("run_id") or _new_run_id()
        config = {**config, "run_id": run_id}
        return config, _Handover(RunEvents.for_new_run(self, config, run_id))
