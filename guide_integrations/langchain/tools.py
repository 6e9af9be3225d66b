"""Tool binding: LangChain's tools and ``tool_choice`` in, the engine's options out.

``bind_tools`` (in :class:`.structured.ToolsAndSchemas`, shared by ``ChatGuide`` and its bindings)
only translates. Tools become OpenAI-style tool dicts (``convert_to_openai_tool``), the tool choice
one of the engine's values; the engine's grammar then makes every call parse and
validate against its tool's schema (``docs/design/tools-contract.md``). Structured output, which
also binds a tool for ``method="function_calling"``, is :mod:`.structured`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from guide_engine.errors import GuideValueError

__all__ = ["ToolLike", "format_tools", "tool_choice_option", "tool_options"]

ToolLike = Mapping[str, Any] | type | Callable[..., Any] | BaseTool
"""What ``bind_tools`` accepts: a ``BaseTool``, a function, a pydantic model or TypedDict, or a tool dict."""

_CHOICE_WORDS = {"auto": "auto", "none": "none", "required": "required", "any": "required"}


def format_tools(tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """The tools as OpenAI-style dicts ``{"type": "function", "function": {...}}`` (the engine checks them per call)."""
    formatted: list[dict[str, Any]] = []
    for tool in tools:
        openai_tool: dict[str, Any] = convert_to_openai_tool(tool)
        if openai_tool.get("type") != "function" or "name" not in openai_tool.get("function", {}):
            raise GuideValueError(
                f"ChatGuide can call function tools only, got {openai_tool!r}; pass a BaseTool, a function, "
                "a pydantic model, a TypedDict or a {'type': 'function', 'function': {...}} dict"
            )
        function = {key: value for key, value in openai_tool["function"].items() if key != "strict"}
        formatted.append({"type": "function", "function": function})
    return formatted


def tool_choice_option(tool_choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | dict[str, Any] | None:
    """LangChain's ``tool_choice`` as the engine's: ``"any"`` is ``"required"``, a name must be a tool's.

    ``None`` leaves the engine's default (``"auto"``: text or calls); ``True`` forces the only tool.
    """
    names = [tool["function"]["name"] for tool in tools]
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True:
        if len(names) != 1:
            raise GuideValueError(
                f"tool_choice=True forces the only tool, but {len(names)} tools are bound; name one of "
                f"{', '.join(map(repr, names))} or use 'required'"
            )
        return names[0]
    if isinstance(tool_choice, str):
        if tool_choice in _CHOICE_WORDS:
            return _CHOICE_WORDS[tool_choice]
        if tool_choice in names:
            return tool_choice
    elif isinstance(tool_choice, Mapping):
        name = tool_choice.get("function", {}).get("name") if tool_choice.get("type") == "function" else None
        if name in names:
            return {"type": "function", "function": {"name": name}}
    raise GuideValueError(
        f"tool_choice {tool_choice!r} is not one of 'auto', 'any', 'required', 'none', a bound tool's name "
        f"({', '.join(map(repr, names)) or 'no tools are bound'}) or {{'type': 'function', 'function': "
        "{'name': ...}}"
    )


def tool_options(tools: Sequence[ToolLike], tool_choice: Any = None) -> dict[str, Any]:
    """The call keywords that bind ``tools`` under ``tool_choice`` (what ``bind_tools`` binds)."""
    formatted = format_tools(tools)
    options: dict[str, Any] = {"tools": formatted}
    choice = tool_choice_option(tool_choice, formatted)
    if choice is not None:
        options["tool_choice"] = choice
    return options
