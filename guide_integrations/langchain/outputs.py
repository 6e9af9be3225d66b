"""Engine results out, as LangChain messages: the answer, its chunks, usage, metadata and tool calls.

``invoke`` returns :func:`chat_result`'s message; a stream yields :func:`text_chunk` per piece,
then :func:`closing_chunks` (one per tool call, when the call may call tools), then
:func:`usage_chunk`, the only chunk with usage and metadata, so summing the chunks counts the
prompt once. Tool-call markup never reaches ``content``: the engine takes it out of the text, and
an unfinished call comes back as an ``invalid_tool_calls`` entry (LangChain sums a chunk whose
arguments do not parse into one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from guide_engine import GenerationResult
from guide_engine.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

from ..core import token_usage

__all__ = [
    "chat_result",
    "closing_chunks",
    "cut_calls",
    "invalid_tool_calls",
    "response_metadata",
    "text_chunk",
    "to_ai_message",
    "tool_call_chunks",
    "tool_calls",
    "unfinished_call_chunks",
    "usage",
    "usage_chunk",
]


def usage(result: GenerationResult) -> UsageMetadata:
    """Token counts of one result, in LangChain's ``usage_metadata`` shape."""
    counts = token_usage(result)
    return UsageMetadata(  # type: ignore[typeddict-item]  # no token details to report
        input_tokens=counts["prompt_tokens"],
        output_tokens=counts["completion_tokens"],
        total_tokens=counts["total_tokens"],
    )


def response_metadata(result: GenerationResult, model_name: str) -> dict[str, Any]:
    """Model name, finish reason and the spans that were applied, each with its Δ; and
    ``dropped_markup`` when tool-call markup was taken out of the text (see
    :attr:`~guide_engine.GenerationResult.dropped_markup`)."""
    metadata: dict[str, Any] = {
        "model_name": model_name,
        "finish_reason": result.finish_reason,
        "spans": [span.to_dict() for span in result.spans],
    }
    if result.dropped_markup:
        metadata["dropped_markup"] = list(result.dropped_markup)
    return metadata


def tool_calls(result: GenerationResult) -> list[ToolCall]:
    """The result's tool calls, as LangChain ``ToolCall`` dicts (ids, names, parsed arguments)."""
    return [tool_call(name=call.name, args=dict(call.arguments), id=call.id) for call in result.tool_calls]


def to_ai_message(result: GenerationResult, model_name: str, *, may_call_tools: bool = False) -> AIMessage:
    """The whole answer as one message: its text (never tool-call markup), and the calls."""
    return AIMessage(
        content=result.text,
        tool_calls=tool_calls(result),
        invalid_tool_calls=invalid_tool_calls(result) if may_call_tools else [],
        usage_metadata=usage(result),
        response_metadata=response_metadata(result, model_name),
    )


def cut_calls(result: GenerationResult) -> list[str]:
    """The calls the model began but did not finish (cut by ``max_tokens``), as their markup (a whole
    call in ``dropped_markup`` repeated an answered one: no call, and not invalid either)."""
    dropped = result.dropped_markup
    return [markup for markup in dropped if markup.startswith(TOOL_CALL_OPEN) and not markup.endswith(TOOL_CALL_CLOSE)]


def invalid_tool_calls(result: GenerationResult) -> list[InvalidToolCall]:
    """Each unfinished call as LangChain's ``InvalidToolCall`` (none for a marker cut in the middle)."""
    error = f"tool call cut short (finish_reason {result.finish_reason!r}); raise max_tokens"
    return [invalid_tool_call(name=None, args=markup, id=None, error=error) for markup in cut_calls(result)]


def tool_call_chunks(result: GenerationResult) -> list[AIMessageChunk]:
    """One chunk per tool call of a streamed answer: its name, id, index and arguments as JSON."""
    return [
        AIMessageChunk(
            content="",
            tool_call_chunks=[
                tool_call_chunk(name=call.name, args=json.dumps(call.arguments), id=call.id, index=index)
            ],
        )
        for index, call in enumerate(result.tool_calls)
    ]


def unfinished_call_chunks(result: GenerationResult) -> list[AIMessageChunk]:
    """Each call cut short, as a chunk whose arguments do not parse: it sums to an ``invalid_tool_calls`` entry."""
    return [
        AIMessageChunk(
            content="",
            tool_call_chunks=[tool_call_chunk(name=None, args=markup, id=None, index=len(result.tool_calls) + n)],
        )
        for n, markup in enumerate(cut_calls(result))
    ]


def chat_result(result: GenerationResult, model_name: str, *, may_call_tools: bool) -> ChatResult:
    """The answer of ``_generate``/``_agenerate``: one generation holding :func:`to_ai_message`."""
    message = to_ai_message(result, model_name, may_call_tools=may_call_tools)
    return ChatResult(generations=[ChatGeneration(message=message)])


def text_chunk(text: str) -> ChatGenerationChunk:
    """One streamed piece of text (never tool-call markup: the engine holds it back)."""
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


def closing_chunks(result: GenerationResult, *, may_call_tools: bool) -> Iterator[ChatGenerationChunk]:
    """After the last piece: a chunk per tool call, then per call cut short (none if tools may not be called)."""
    if not may_call_tools:
        return
    for chunk in tool_call_chunks(result):
        yield ChatGenerationChunk(message=chunk)
    for chunk in unfinished_call_chunks(result):  # LangChain reads them back as invalid_tool_calls
        yield ChatGenerationChunk(message=chunk)


def usage_chunk(result: GenerationResult, model_name: str) -> ChatGenerationChunk:
    """The closing chunk of a stream: no text, the usage and metadata of the whole answer.

    Only this chunk carries usage and metadata, so summing chunks counts the prompt once.
    """
    message = AIMessageChunk(
        content="",
        usage_metadata=usage(result),
        response_metadata=response_metadata(result, model_name),
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)
