"""LangChain messages in, engine prompts out; engine results in, LangChain messages out.

Trust follows authorship. Text the developer wrote (system and human messages, prompt templates
in any format) reaches the engine verbatim, tags included. Text that comes from elsewhere never
creates a span and never raises: the model's own earlier answers (``AIMessage``, and any message
with role ``"assistant"``) are always escaped, tool results (``ToolMessage``, and role
``"tool"``) are escaped by default, and end-user input, chat history and retrieved documents are
escaped by :class:`~guide_integrations.langchain.GuideChatPromptTemplate` (or piped through
:data:`escape_documents` before a plain template).

Tool traffic travels in the engine's message shape (``docs/design/tools-contract.md``): an
assistant turn carries its ``tool_calls``, a tool result its ``tool_call_id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.runnables import RunnableLambda

from guide_engine import GenerationResult, escape_tags
from guide_engine.errors import GuideValueError
from guide_engine.tools import TOOL_CALL_OPEN

from ..core import escape_untrusted_value, token_usage

__all__ = [
    "MessageError",
    "escape_documents",
    "escape_untrusted",
    "escaped_by_chat_guide",
    "to_engine_prompt",
]

_ROLES: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
    FunctionMessage: "tool",
}
_TEXT_BLOCKS = ("text",)
_CALL_BLOCKS = ("tool_use", "tool_call", "function_call")  # Anthropic, v1 and OpenAI-style call blocks
ASSISTANT, TOOL = "assistant", "tool"


class MessageError(GuideValueError):
    """A message ChatGuide cannot send to the model (non-text content, an unknown message type)."""


def to_engine_prompt(messages: Sequence[BaseMessage], *, escape_tool_messages: bool = True) -> list[dict[str, Any]]:
    """Turn LangChain messages into the engine's ``{"role", "content"}`` list.

    Assistant turns are always escaped (the model's own output is never parsed for tags) and
    carry their tool calls; tool results carry ``tool_call_id`` and ``name``.

    Args:
        messages: the conversation; system, human, AI, tool and chat messages are accepted.
        escape_tool_messages: escape the content of tool results so that tags in them stay literal
            text (they come from a tool, not from the prompt's author).

    Raises:
        MessageError: for content other than text, or a message type without a chat role.
    """
    prompt: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = _role(message, index)
        content = _text(message, index)
        if role == ASSISTANT or (escape_tool_messages and role == TOOL):
            content = escape_tags(content)
        entry: dict[str, Any] = {"role": role, "content": content}
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": call.get("id") or f"call_{index}_{n}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": dict(call["args"])},
                }
                for n, call in enumerate(message.tool_calls)
            ]
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
            if message.name:
                entry["name"] = message.name
        prompt.append(entry)
    return prompt


def escaped_by_chat_guide(message: BaseMessage) -> bool:
    """Whether ChatGuide escapes this message's content itself: assistant turns and tool results."""
    try:
        return _role(message, 0) in (ASSISTANT, TOOL)
    except MessageError:
        return False


def _role(message: BaseMessage, index: int) -> str:
    if isinstance(message, ChatMessage):
        return message.role
    for kind, role in _ROLES.items():
        if isinstance(message, kind):
            return role
    raise MessageError(
        f"message {index} is a {type(message).__name__}, which has no chat role; "
        "use SystemMessage, HumanMessage, AIMessage, ToolMessage or ChatMessage"
    )


def _text(message: BaseMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") in _TEXT_BLOCKS:
            parts.append(str(block.get("text", "")))
        elif isinstance(block, Mapping) and block.get("type") in _CALL_BLOCKS and getattr(message, "tool_calls", None):
            continue  # a provider's copy of a call that `message.tool_calls` already carries
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise MessageError(
                f"message {index} ({message.type}) has a {kind!r} content block; "
                "ChatGuide sends text only (strings and 'text' blocks)"
            )
    return "".join(parts)


# ----------------------------------------------------------------------------- untrusted text


def escape_untrusted(value: Any) -> Any:
    """Escape every tag marker in text from outside the prompt's author, keeping its shape.

    Strings are escaped with :func:`guide_engine.escape_tags`; ``Document`` page contents and
    message contents are escaped (metadata untouched); lists, tuples and dicts are escaped item
    by item. Every other value (numbers, ``None``, objects) passes through unchanged, as in
    :func:`guide_integrations.core.escape_untrusted_value`, the walker both integrations share:
    turn an object that prints tag markers into a string first.
    """
    return escape_untrusted_value(value, _escape_object)


def _escape_object(value: Any) -> Any:
    if isinstance(value, Document):
        return value.model_copy(update={"page_content": escape_tags(value.page_content)})
    if isinstance(value, BaseMessage):
        return value.model_copy(update={"content": _escape_content(value.content)})
    return value


def _escape_content(content: str | list[Any]) -> str | list[Any]:
    if isinstance(content, str):
        return escape_tags(content)
    escaped: list[Any] = []
    for block in content:
        if isinstance(block, str):
            escaped.append(escape_tags(block))
        elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
            escaped.append({**block, "text": escape_tags(block["text"])})
        else:
            escaped.append(block)
    return escaped


escape_documents = RunnableLambda(escape_untrusted, name="escape_documents")
"""A runnable that makes retrieved documents (or any untrusted text) literal: no spans.

Pipe retrieval through it before the prompt, e.g.
``{"context": retriever | format_docs | escape_documents, "question": RunnablePassthrough()}``.
"""


# -------------------------------------------------------------------------------- results out


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
    """The calls the model began but did not finish (cut by ``max_tokens``), as their markup."""
    return [markup for markup in result.dropped_markup if markup.startswith(TOOL_CALL_OPEN)]


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


def final_chunk(result: GenerationResult, model_name: str) -> AIMessageChunk:
    """The closing chunk of a stream: no text, the usage and metadata of the whole answer.

    Only this chunk carries usage and metadata, so summing chunks counts the prompt once.
    """
    return AIMessageChunk(
        content="",
        usage_metadata=usage(result),
        response_metadata=response_metadata(result, model_name),
        chunk_position="last",
    )
