"""LlamaIndex chat messages to engine messages and back: who may create spans, tool traffic.

Which text may carry GUIDE tags follows from where it came from (``docs/tags.md``: tags are the
developer's; outside text never makes spans):

* system and user messages handed to ``GuideLLM`` are the developer's: their tags apply — except
  the end user's own words inside a chat engine (``end_user_texts``, found by
  :mod:`~guide_integrations.llama_index.provenance`), which are escaped wherever they appear;
* assistant turns are model output and tool messages are tool output: always escaped, never
  parsed, so a model that once wrote ``<-!>`` cannot break the next turn.

Tool calls travel on the assistant message as ``additional_kwargs["tool_calls"]`` in the
OpenAI shape (``{"id", "type": "function", "function": {"name", "arguments": <JSON text>}}``),
the shape LlamaIndex's own helpers read; :func:`tool_selections` also reads ``ToolCallBlock``\\ s.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.core.llms.llm import ToolSelection

from guide_engine import TagError, escape_tags, parse_tags
from guide_engine.errors import GuideValueError

__all__ = [
    "assistant_message",
    "engine_messages",
    "escape_end_user_texts",
    "message_text",
    "openai_tool_calls",
    "tool_chat_kwargs",
    "tool_selections",
    "trusted_copy",
]

_ASSISTANT = {MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL}
_TOOL = {MessageRole.TOOL, MessageRole.FUNCTION}
_MEDIA_BLOCKS = (ImageBlock, AudioBlock, VideoBlock, DocumentBlock)


def message_text(message: ChatMessage, index: int) -> str:
    """The text blocks of a message joined by newlines; media blocks are refused (text only)."""
    texts = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, _MEDIA_BLOCKS):
            raise GuideValueError(
                f"message {index} has a {type(block).__name__}; GuideLLM takes text only (TextBlock): "
                "describe the media in text, or use a multimodal LLM for that step"
            )
    return "\n".join(texts)


def escape_end_user_texts(text: str, end_user_texts: Iterable[str]) -> str:
    """``text`` with every occurrence of an end user's text escaped (longest first, each once).

    An occurrence cannot say whether the user typed it or the developer's template holds the same
    characters; for a whole sentence the difference never matters, for a bare marker it may: when
    escaping leaves the developer's tags unbalanced, every marker of ``text`` is escaped instead
    (the call then has no span, and does not raise).
    """
    escaped = text
    for untrusted in sorted(end_user_texts, key=len, reverse=True):
        if untrusted in escaped:
            escaped = escaped.replace(untrusted, escape_tags(untrusted))
    if escaped == text:
        return text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty spans warn once, when the engine parses
            parse_tags(escaped)
    except TagError:
        return escape_tags(text)
    return escaped


def engine_messages(messages: Sequence[ChatMessage], end_user_texts: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``{"role", "content", ...}`` dicts for ``GuideEngine``: tags apply only where the developer wrote them.

    Args:
        messages: the conversation LlamaIndex passes to ``chat``.
        end_user_texts: texts typed by an end user (of a chat engine); escaped in every message.
    """
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        text = message_text(message, index)
        if message.role in _ASSISTANT:
            entry: dict[str, Any] = {"role": "assistant", "content": escape_tags(text)}  # model output
            calls = _engine_tool_calls(message)
            if calls:
                entry["tool_calls"] = calls
        elif message.role in _TOOL:
            entry = {"role": "tool", "content": escape_tags(text)}  # tool output: never a span
            call_id = message.additional_kwargs.get("tool_call_id")
            if call_id:
                entry["tool_call_id"] = str(call_id)
            name = message.additional_kwargs.get("name") or message.additional_kwargs.get("tool_name")
            if name:
                entry["name"] = str(name)
        else:
            role = "system" if message.role == MessageRole.DEVELOPER else message.role.value
            entry = {"role": role, "content": escape_end_user_texts(text, end_user_texts)}
        converted.append(entry)
    return converted


def trusted_copy(messages: Sequence[ChatMessage], end_user_texts: Sequence[str] = ()) -> list[ChatMessage]:
    """The messages with untrusted text escaped, still as ``ChatMessage``\\ s (for ``messages_to_prompt``)."""
    escaped = engine_messages(messages, end_user_texts)
    return [
        message.model_copy(update={"blocks": [TextBlock(text=entry["content"])]})
        for message, entry in zip(messages, escaped, strict=True)
    ]


# -------------------------------------------------------------------------------- tool calls


def assistant_message(text: str, tool_calls: Sequence[Any] = ()) -> ChatMessage:
    """The model's answer as an assistant ``ChatMessage``; engine ``ToolCall``\\ s go in ``additional_kwargs``."""
    calls = {"tool_calls": openai_tool_calls(tool_calls)} if tool_calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, content=text, additional_kwargs=calls)


def openai_tool_calls(calls: Sequence[Any]) -> list[dict[str, Any]]:
    """Engine ``ToolCall``\\ s as OpenAI-style dicts (``arguments`` as JSON text)."""
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
        for call in calls
    ]


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _raw_calls(message: ChatMessage) -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, name, arguments)`` of every call on a message: OpenAI-style kwargs, then ToolCallBlocks."""
    calls = []
    for call in message.additional_kwargs.get("tool_calls") or []:
        if isinstance(call, dict):
            function = call.get("function") or {}
            calls.append(
                (str(call.get("id") or ""), str(function.get("name", "")), _arguments(function.get("arguments")))
            )
        else:  # an object with attributes, e.g. an OpenAI SDK ChatCompletionMessageToolCall
            function = getattr(call, "function", None)
            calls.append(
                (
                    str(getattr(call, "id", "") or ""),
                    str(getattr(function, "name", "")),
                    _arguments(getattr(function, "arguments", None)),
                )
            )
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            calls.append((block.tool_call_id or "", block.tool_name, _arguments(block.tool_kwargs)))
    return calls


def _engine_tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    return [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in _raw_calls(message)
    ]


def tool_chat_kwargs(
    tools: Sequence[dict[str, Any]], tool_required: bool = False, tool_choice: str | dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` keywords of a ``chat`` call (none without tools).

    ``tool_choice`` passes through (``"auto"``, ``"none"``, ``"required"``, a tool name or
    ``{"type": "function", "function": {"name": ...}}``); without it, ``tool_required`` means
    ``"required"`` and otherwise ``"auto"``. The engine's grammar enforces the choice.

    Raises:
        GuideValueError: ``tool_required`` or a ``tool_choice`` that needs a tool, with no tools.
    """
    if tools:
        choice = tool_choice if tool_choice is not None else ("required" if tool_required else "auto")
        return {"tools": list(tools), "tool_choice": choice}
    if tool_required or tool_choice not in (None, "auto", "none"):
        raise GuideValueError(
            f"tool_required={tool_required}, tool_choice={tool_choice!r} need at least one tool; pass tools=[...]"
        )
    return {}


def tool_selections(message: ChatMessage) -> list[ToolSelection]:
    """The tool calls on an assistant message, as LlamaIndex ``ToolSelection``\\ s."""
    return [
        ToolSelection(tool_id=call_id, tool_name=name, tool_kwargs=arguments)
        for call_id, name, arguments in _raw_calls(message)
    ]
