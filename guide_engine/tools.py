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
    "AnsweredCall",
    "ToolCall",
    "answered_calls",
    "ToolMarkupFilter",
    "ToolSpec",
    "check_tool_choice",
    "check_tools",
    "fallback_tool_text",
    "has_tool_traffic",
    "new_call_id",
    "parse_tool_call",
    "prepare_messages",
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


AnsweredCall = tuple[str, dict[str, Any]]
"""A call that a tool result answered: its name and arguments."""


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


def answered_calls(prompt: Any) -> list[AnsweredCall]:
    """The calls of a conversation that a tool result answers, as ``(name, arguments)``.

    A tool result answers the call whose id is its ``tool_call_id``; one without a
    ``tool_call_id`` answers the calls of the assistant turn before it.
    """
    if isinstance(prompt, str):
        return []
    pending: dict[str, AnsweredCall] = {}
    last_turn: list[AnsweredCall] = []
    answered: list[AnsweredCall] = []
    for message in prompt:
        if not isinstance(message, Mapping):
            continue
        if message.get("tool_calls"):
            calls = [_call_dict(call) for call in message["tool_calls"]]
            last_turn = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            pending.update((c["id"], call) for c, call in zip(calls, last_turn))
        elif message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if call_id in pending:
                answered.append(pending.pop(call_id))
            elif not call_id:
                answered.extend(last_turn)
    return answered


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


def parse_tool_call(block: str) -> ToolCall | None:
    """The call in one ``<tool_call>{"name": str, "arguments": {...}}</tool_call>`` block, or ``None``.

    ``None`` for anything else: a block cut short (no closing marker), a body that is not JSON or
    not of that shape.
    """
    if not (block.startswith(TOOL_CALL_OPEN) and block.endswith(TOOL_CALL_CLOSE)):
        return None
    try:
        body = json.loads(block[len(TOOL_CALL_OPEN) : -len(TOOL_CALL_CLOSE)])
    except json.JSONDecodeError:
        return None
    if not (isinstance(body, dict) and isinstance(body.get("name"), str)):
        return None
    arguments = body.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), body["name"], arguments)


class ToolMarkupFilter:
    """Generated text in, the same text without tool-call markup out, piece by piece.

    Every ``<tool_call>…</tool_call>`` block (and one left open at the end) is taken out of the
    text and kept in :attr:`blocks`, whether or not the request may call tools: the caller decides
    what a block becomes (a call, an invalid call, or markup that is only reported). Whitespace
    next to a block goes with it, except between two pieces of text:
    ``"Sure.\n<tool_call>…</tool_call>\n"`` shows ``"Sure."``, ``"A <tool_call>…</tool_call> B"``
    shows ``"A B"``.

    While text may still turn into a block it is held back: the end of a piece that could be the
    start of ``<tool_call>``, and trailing whitespace (a block may follow it). The pieces therefore
    add up to :attr:`text`, and each piece costs time proportional to its own length and the
    markers' (a run of blanks is held back whole).

    Attributes:
        text: the text shown so far (after :meth:`finish`: all of it).
        blocks: the markup taken out, in order; a block cut short lacks ``</tool_call>``, and at
            the end of an answer cut short a lone beginning of the marker (``"<tool"``) is a block too.
    """

    def __init__(self) -> None:
        self.text = ""
        self.blocks: list[str] = []
        self._space = ""  # held-back whitespace, outside a block
        self._tail = ""  # held-back text that may start the opening marker, outside a block
        self._block: list[str] | None = None  # inside a block: its pieces so far
        self._block_end = ""  # inside a block: its last characters, where a closing marker may have begun
        self._after_block = False  # a block came last (blanks at most since)

    def feed(self, new: str) -> str:
        """Add generated text; return the part that is now safe to show."""
        text, self._tail = self._tail + new, ""
        shown = "".join(self._scan(text))
        self.text += shown
        return shown

    def finish(self, cut_short: bool = False) -> str:
        """The held-back text at the end of the answer.

        ``cut_short``: the answer ended early (``max_new_tokens``, a timeout), so a trailing
        beginning of the marker is a call that was starting, not text.
        """
        shown = ""
        if self._block is not None:
            self.blocks.append("".join(self._block))
        elif self._tail and cut_short:
            self.blocks.append(self._tail)
        elif not self._after_block or self._tail:
            shown = self._space + self._tail
        self._space, self._tail, self._block, self._block_end = "", "", None, ""
        self.text += shown
        return shown

    def _scan(self, text: str) -> list[str]:
        shown: list[str] = []
        while text:
            if self._block is not None:
                window = self._block_end + text
                at = window.find(TOOL_CALL_CLOSE)
                if at < 0:
                    self._block.append(text)
                    self._block_end = window[-(len(TOOL_CALL_CLOSE) - 1) :]
                    return shown
                end = at + len(TOOL_CALL_CLOSE) - len(self._block_end)  # in `text`
                self.blocks.append("".join(self._block) + text[:end])
                self._block, self._block_end, self._after_block = None, "", True
                text = text[end:]
                continue
            if self._after_block and not (self.text or shown):
                text = text.lstrip()  # blanks after a block at the start of the answer
                if not text:
                    return shown
            at = text.find(TOOL_CALL_OPEN)
            if at >= 0:
                before = text[:at].rstrip()
                if before:
                    shown.append(self._space + before)
                self._space, self._block = "", []
                text = text[at:]
                continue
            keep = _marker_start_length(text)
            body, self._tail = text[: len(text) - keep], text[len(text) - keep :]
            stripped = body.rstrip()
            if stripped:
                shown.append(self._space + stripped)
                self._space, self._after_block = body[len(stripped) :], False
            else:
                self._space += body
            return shown
        return shown


def _marker_start_length(text: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``<tool_call>``."""
    for length in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-length:]):
            return length
    return 0
