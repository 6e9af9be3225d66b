"""LangChain messages in, engine prompts out; engine results in, LangChain messages out.

Trust follows authorship. Text the developer wrote — system, human and AI messages, prompt
templates in any format — reaches the engine verbatim, tags included. Text that comes from
elsewhere must not create spans: tool results (``ToolMessage``, and ``ChatMessage`` with role
``"tool"``) are escaped here by default, and retrieved documents or end-user input are piped
through :data:`escape_documents` before they are formatted into a template.
"""

from __future__ import annotations

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
from langchain_core.runnables import RunnableLambda

from guide_engine import GenerationResult, escape_tags
from guide_engine.errors import GuideValueError

from ..core import escape_untrusted_value, token_usage

__all__ = ["MessageError", "escape_documents", "escape_untrusted", "to_engine_prompt"]

_ROLES: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
    FunctionMessage: "tool",
}
_TEXT_BLOCKS = ("text",)


class MessageError(GuideValueError):
    """A message ChatGuide cannot send to the model (non-text content, an unknown message type)."""


def to_engine_prompt(messages: Sequence[BaseMessage], *, escape_tool_messages: bool = True) -> list[dict[str, str]]:
    """Turn LangChain messages into the engine's ``{"role", "content"}`` list.

    Args:
        messages: the conversation; system, human, AI, tool and chat messages are accepted.
        escape_tool_messages: escape the content of tool results so that tags in them stay literal
            text (they come from a tool, not from the prompt's author).

    Raises:
        MessageError: for content other than text, or a message type without a chat role.
    """
    prompt = []
    for index, message in enumerate(messages):
        role = _role(message, index)
        content = _text(message, index)
        if escape_tool_messages and role == "tool":
            content = escape_tags(content)
        prompt.append({"role": role, "content": content})
    return prompt


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
    """Model name, finish reason and the spans that were applied, each with its Δ."""
    return {
        "model_name": model_name,
        "finish_reason": result.finish_reason,
        "spans": [span.to_dict() for span in result.spans],
    }


def to_ai_message(result: GenerationResult, model_name: str) -> AIMessage:
    """The whole answer as one message."""
    return AIMessage(
        content=result.text,
        usage_metadata=usage(result),
        response_metadata=response_metadata(result, model_name),
    )


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
