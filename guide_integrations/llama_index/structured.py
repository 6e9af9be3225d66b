"""Structured output for ``GuideLLM``: a pydantic class becomes the engine's ``response_format``.

LlamaIndex's default programs ask the model to *write* JSON (``LLMTextCompletionProgram``) or to
call a tool named after the class (``FunctionCallingProgram``) and parse what comes back; a
135M model echoes the schema instead. ``GuideLLM`` hands the class's JSON schema to the engine's
constrained decoder, so the output parses and validates whatever the model's size.

:class:`StructuredRun` is what the four ``structured_predict`` forms share: the chat keywords of
one constrained call, and LlamaIndex's structured-predict events (start, in progress, end) as the
objects come back, dispatched as LlamaIndex's own ``LLM.structured_predict`` dispatches them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Mapping
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictInProgressEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.program.streaming_utils import process_streaming_content_incremental
from llama_index.core.prompts.base import BasePromptTemplate
from pydantic import BaseModel

from guide_engine import GuideError
from guide_engine.errors import GuideValueError

from ..core import json_schema_format

__all__ = ["StructuredRun", "parse_structured", "pydantic_json_schema", "structured_kwargs"]

dispatcher = get_dispatcher(__name__)

PROGRAM_KEYWORDS = ("tool_required", "tool_choice", "allow_parallel_tool_calls")
"""``llm_kwargs`` that LlamaIndex's ``FunctionCallingProgram`` adds for its tool call; a schema call drops them."""


def pydantic_json_schema(output_cls: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a pydantic class (its ``model_json_schema()``), which LlamaIndex's programs use."""
    if not (isinstance(output_cls, type) and issubclass(output_cls, BaseModel)):
        raise GuideValueError(
            f"output_cls must be a pydantic BaseModel subclass, got {output_cls!r}; "
            "wrap a TypedDict or a dict schema in a pydantic model"
        )
    return output_cls.model_json_schema()


def structured_kwargs(output_cls: type[BaseModel], llm_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A structured call's chat keywords: the caller's, minus program-only keywords, plus the schema."""
    options = {k: v for k, v in (llm_kwargs or {}).items() if k not in PROGRAM_KEYWORDS}
    options["response_format"] = json_schema_format(pydantic_json_schema(output_cls))
    return options


def parse_structured(output_cls: type[BaseModel], response: ChatResponse) -> BaseModel:
    """The validated object of a constrained chat response.

    Raises:
        GuideValueError: the output stopped at ``max_new_tokens`` before the JSON was complete
            (the grammar keeps it valid, but cannot shorten it).
        GuideError: the engine stopped for another reason (a stop string cut the JSON).
    """
    text = response.message.content or ""
    try:
        return output_cls.model_validate_json(text)
    except ValueError as error:
        reason = response.additional_kwargs.get("finish_reason")
        tokens = response.additional_kwargs.get("completion_tokens")
        if reason == "length":
            raise GuideValueError(
                f"the {output_cls.__name__} JSON was cut at max_new_tokens ({tokens} tokens) before it was "
                f"complete; raise max_new_tokens (got {text[:80]!r})"
            ) from error
        raise GuideError(
            f"the {output_cls.__name__} output did not validate (finish reason {reason!r}); "
            f"a stop string may have cut it: {text[:80]!r}"
        ) from error


class StructuredRun:
    """One constrained ``structured_predict`` call, in any of its four forms.

    Made when the call starts (it dispatches ``LLMStructuredPredictStartEvent``); the form sends
    :attr:`messages` with :attr:`chat_kwargs` to its chat method and hands the response to
    :meth:`result`, or the chunks to :meth:`objects` / :meth:`aobjects`, which dispatch the
    in-progress and end events.
    """

    def __init__(
        self,
        output_cls: type[BaseModel],
        messages: list[ChatMessage],
        llm_kwargs: Mapping[str, Any] | None,
        template: BasePromptTemplate,
        template_args: dict[str, Any],
    ) -> None:
        """Check ``output_cls``, build the chat keywords, dispatch the start event (with the caller's values)."""
        self.output_cls = output_cls
        self.messages = messages
        self.chat_kwargs = structured_kwargs(output_cls, llm_kwargs)
        self.current: Any = None
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=template, template_args=template_args)
        )

    def result(self, response: ChatResponse) -> BaseModel:
        """The validated object of a whole response; dispatches the end event."""
        self.current = parse_structured(self.output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=self.current))
        return self.current

    def objects(self, chunks: Iterable[ChatResponse]) -> Generator[Any, None, None]:
        """One object per streamed chunk: partial until the last, a validated ``output_cls`` then."""
        for chunk in chunks:
            yield self._partial(chunk)
        dispatcher.event(LLMStructuredPredictEndEvent(output=self.current))

    async def aobjects(self, chunks: AsyncIterator[ChatResponse]) -> AsyncGenerator[Any, None]:
        """:meth:`objects` of an async stream."""
        async for chunk in chunks:
            yield self._partial(chunk)
        dispatcher.event(LLMStructuredPredictEndEvent(output=self.current))

    def _partial(self, chunk: ChatResponse) -> Any:
        if "finish_reason" in chunk.additional_kwargs:  # the last chunk carries the finished result
            self.current = parse_structured(self.output_cls, chunk)
        else:  # LlamaIndex's incremental parser
            self.current = process_streaming_content_incremental(chunk, self.output_cls, self.current)
        dispatcher.event(LLMStructuredPredictInProgressEvent(output=self.current))
        return self.current
