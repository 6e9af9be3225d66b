"""LangChain messages in, the engine's ``{"role", "content"}`` prompt out.

The other direction, engine results to LangChain messages, is :mod:`.outputs`; escaping values
before they enter a template is :mod:`.templates`.

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

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.prompt_values import PromptValue

from guide_engine import escape_tags
from guide_engine.errors import GuideValueError

__all__ = ["MessageError", "escaped_by_chat_guide", "input_messages", "to_engine_prompt"]

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


def input_messages(item: Any) -> list[BaseMessage]:
    """An input as LangChain's chat models read it: a string, a prompt value or a list of messages."""
    if isinstance(item, PromptValue):
        return item.to_messages()
    if isinstance(item, str):
        return [HumanMessage(content=item)]
    return convert_to_messages(item)
