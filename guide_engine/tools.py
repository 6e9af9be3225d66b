"""Tools: their definitions, how the model sees them, and how its calls are read back.

The model writes each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the
Hermes/Qwen format); the grammar of :mod:`guide_engine.constraints` keeps it well formed. Tools
reach the prompt through the chat template's ``tools=`` when the template uses it, else as one
system text (:func:`fallback_tool_text`). See ``docs/design/tools-contract.md``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GuideValueError
from .tags import escape_tags

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_CHOICES",
    "ToolCall",
    "ToolSpec",
    "check_tool_choice",
    "check_tools",
    "fallback_tool_text",
    "has_tool_traffic",
    "new_call_id",
    "prepare_messages",
    "split_tool_calls",
    "template_uses_tools",
]

TOOL_CALL_OPEN = "<tool_call>"
"""Opens one call in the model's output."""
TOOL_CALL_CLOSE = "</tool_call>"
"""Closes one call in the model's output."""
TOOL_CHOICES = ("auto", "none", "required")
"""The ``tool_choice`` modes; any other string names the one tool to call."""

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)

FALLBACK_HEADER = (
    "You can call these tools. To call one, answer with\n"
    + TOOL_CALL_OPEN
    + '{"name": <tool name>, "arguments": <arguments as a JSON object>}'
    + TOOL_CALL_CLOSE
    + "\nTools:"
)
"""The first lines of the fallback system text; one JSON line per tool follows."""


@dataclass(frozen=True)
class ToolSpec:
    """A checked tool definition.

    Attributes:
        name: what the model calls it.
        description: what it does (may be empty).
        parameters: JSON schema of its arguments (an object schema).
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(NO_PARAMETERS))

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI-style dict that chat templates take in ``tools=``."""
        function = {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made.

    Attributes:
        id: ``"call_"`` and 24 hex characters, unique per call.
        name: the tool's name.
        arguments: the parsed arguments (they validate against the tool's ``parameters``).
    """

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI-style dict an assistant message carries in ``tool_calls``."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    """A fresh tool-call id: ``"call_"`` and 24 random hex characters."""
    return "call_" + secrets.token_hex(12)


# ------------------------------------------------------------------------------------ checking


def check_tools(tools: Any) -> tuple[ToolSpec, ...]:
    """OpenAI-style tools (``{"type": "function", "function": {...}}``) as :class:`ToolSpec`s.

    Raises:
        GuideValueError: for anything else, naming the bad tool and the expected shape.
    """
    if tools is None:
        return ()
    shape = '{"type": "function", "function": {"name": str, "description": str?, "parameters": dict?}}'
    if isinstance(tools, (str, Mapping)) or not isinstance(tools, Sequence):
        raise GuideValueError(f"tools must be a list of {shape}, got {type(tools).__name__}")
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
            raise GuideValueError(f"tools[{i}] must be {shape}, got {tool!r:.120}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise GuideValueError(f"tools[{i}] name must be 1-64 characters of [A-Za-z0-9_.-], got {name!r}")
        if name in (s.name for s in specs):
            raise GuideValueError(f"tools[{i}] repeats the tool name {name!r}; names must be unique")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise GuideValueError(f"tools[{i}] ({name!r}) description must be a string, got {description!r:.80}")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(NO_PARAMETERS)
        if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
            raise GuideValueError(
                f"tools[{i}] ({name!r}) parameters must be a JSON schema of type 'object', got {parameters!r:.120}"
            )
        specs.append(ToolSpec(name, description, dict(parameters)))
    return tuple(specs)


def check_tool_choice(tool_choice: Any, tools: tuple[ToolSpec, ...]) -> str:
    """``tool_choice`` as ``"auto"``, ``"none"``, ``"required"`` or the name of one of ``tools``.

    ``None`` means ``"auto"`` when there are tools, else ``"none"``.
    """
    names = [t.name for t in tools]
    if tool_choice is None:
        return "auto" if tools else "none"
    allowed = f"'auto', 'none', 'required', a tool name ({', '.join(names) or 'no tools given'}) or " + (
        '{"type": "function", "function": {"name": ...}}'
    )
    choice = tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        choice = function.get("name") if isinstance(function, Mapping) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(choice, str):
            raise GuideValueError(f"tool_choice must be {allowed}, got {tool_choice!r:.120}")
    if not isinstance(choice, str):
        raise GuideValueError(f"tool_choice must be {allowed}, got {tool_choice!r:.120}")
    if choice == "none":
        return choice
    if not tools:
        raise GuideValueError(f"tool_choice={tool_choice!r} needs tools; pass tools=[...] or leave tool_choice unset")
    if choice in ("auto", "required") and not isinstance(tool_choice, Mapping):
        return choice
    if choice not in names:
        raise GuideValueError(f"tool_choice names an unknown tool {choice!r}; the tools are {names}")
    return choice


# ----------------------------------------------------------------------------------- rendering


def template_uses_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders ``tools=`` (rendered with and without a probe tool)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    probe = [{"role": "user", "content": "hi"}]
    tool = ToolSpec("guide_probe_tool", "probe").to_openai()
    try:
        with_tools = tokenizer.apply_chat_template(probe, tools=[tool], tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001  (a template that fails on tools= does not support them)
        return False
    return with_tools != without and "guide_probe_tool" in with_tools


def fallback_tool_text(tools: Sequence[ToolSpec]) -> str:
    """The system text that shows ``tools`` to a model whose template ignores ``tools=``.

    Tool definitions are data, not instructions: their tags are escaped, so they never make spans.
    """
    lines = [
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    ]
    return FALLBACK_HEADER + "\n" + escape_tags("\n".join(lines))


def has_tool_traffic(messages: Any) -> bool:
    """Whether a message list carries tool calls or tool results."""
    if isinstance(messages, str):
        return False
    return any(isinstance(m, Mapping) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages)


def prepare_messages(
    prompt: str | Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec], *, template_tools: bool
) -> list[dict[str, Any]]:
    """Messages ready for the chat template, with the tools and the tool traffic of the conversation.

    With ``template_tools`` the template renders ``tools=`` and ``tool_calls`` itself: calls only get
    their arguments as dicts. Otherwise each assistant turn's calls become ``<tool_call>…</tool_call>``
    text after its content (tags escaped), and the tools are shown by :func:`fallback_tool_text`
    at the end of the first system message (or in a new first system message).
    """
    messages: list[dict[str, Any]] = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    )
    for message in messages:
        calls = message.get("tool_calls")
        if not calls:
            continue
        if message.get("content") is None:
            message["content"] = ""
        normalized = [_call_dict(call) for call in calls]
        if template_tools:
            message["tool_calls"] = normalized
        else:
            bodies = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in normalized]
            text = "".join(TOOL_CALL_OPEN + json.dumps(b, ensure_ascii=False) + TOOL_CALL_CLOSE for b in bodies)
            content = message["content"] if isinstance(message["content"], str) else ""
            message["content"] = content + ("\n" if content else "") + escape_tags(text)
            del message["tool_calls"]
    if tools and not template_tools:
        text = fallback_tool_text(tools)
        if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
            messages[0]["content"] = messages[0]["content"] + "\n\n" + text
        else:
            messages.insert(0, {"role": "system", "content": text})
    return messages


def _call_dict(call: Any) -> dict[str, Any]:
    """An OpenAI-style call with its arguments as a dict (parsed when given as a JSON string)."""
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise GuideValueError(
            'a tool call in a message must be {"id": str, "type": "function", "function": {"name": str, '
            f'"arguments": dict | str}}}}, got {call!r:.120}'
        )
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise GuideValueError(f"tool call arguments are not JSON: {arguments!r:.120}") from None
    if not isinstance(arguments, Mapping):
        raise GuideValueError(f"tool call arguments must be a JSON object, got {arguments!r:.120}")
    return {
        "id": call.get("id") or new_call_id(),
        "type": "function",
        "function": {"name": function["name"], "arguments": dict(arguments)},
    }


# ------------------------------------------------------------------------------------- reading


def split_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """The text outside the calls (stripped) and the well-formed calls in ``text``.

    A block that does not parse as ``{"name": str, "arguments": {...}}`` (cut short by
    ``max_new_tokens``, say) stays in the text.
    """
    calls: list[ToolCall] = []
    outside: list[str] = []
    cursor = 0
    for match in _CALL_RE.finditer(text):
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not (isinstance(body, dict) and isinstance(body.get("name"), str)):
            continue
        arguments = body.get("arguments", {})
        if not isinstance(arguments, dict):
            continue
        outside.append(text[cursor : match.start()])
        cursor = match.end()
        calls.append(ToolCall(new_call_id(), body["name"], arguments))
    outside.append(text[cursor:])
    return "".join(outside).strip() if calls else text, calls
