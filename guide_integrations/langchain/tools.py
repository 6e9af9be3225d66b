"""Tools and structured output: LangChain's forms in, the engine's options out.

``bind_tools`` and ``with_structured_output`` only translate. Tools become OpenAI-style tool
dicts (``convert_to_openai_tool``), the tool choice one of the engine's values, a schema an
OpenAI-style ``response_format``; the engine's grammar then makes every call and every
structured answer parse and validate (``docs/design/tools-contract.md``). Parsing back uses
LangChain's own output parsers, as the partner packages do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from guide_engine import GuideEngine
from guide_engine.errors import GuideError, GuideValueError

__all__ = [
    "OutputCutShortError",
    "StructuredMethod",
    "ToolLike",
    "count_prompt_tokens",
    "format_tools",
    "json_schema",
    "structured_parser",
    "tool_choice_option",
    "with_raw",
]

ToolLike = Mapping[str, Any] | type | Callable[..., Any] | BaseTool
"""What ``bind_tools`` accepts: a ``BaseTool``, a function, a pydantic model or TypedDict, or a tool dict."""

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]

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


def json_schema(schema: Mapping[str, Any] | type) -> dict[str, Any]:
    """The JSON schema of a pydantic model, TypedDict, OpenAI function dict or JSON schema (LangChain's forms)."""
    if isinstance(schema, Mapping) and "type" in schema and "function" not in schema and "name" not in schema:
        return dict(schema)  # a JSON schema as it is
    return convert_to_json_schema(schema)  # type: ignore[arg-type]


def is_pydantic_schema(schema: Any) -> bool:
    """Whether ``schema`` is a pydantic model class (parsed into instances) rather than a dict-like schema."""
    return isinstance(schema, type) and is_basemodel_subclass(schema)


class OutputCutShortError(OutputParserException, GuideError):
    """A structured answer stopped at ``max_tokens`` before it was complete.

    LangChain's ``OutputParserException`` (so ``include_raw=True`` returns it as ``parsing_error``)
    and a :class:`~guide_engine.GuideError`; the message says how many tokens the answer got and
    what to raise.
    """

    def __init__(self, message: str, llm_output: str) -> None:
        super().__init__(message, llm_output=llm_output)
        self.args = (message,)  # the message alone, without LangChain's troubleshooting link


def _cut_short(result: list[Generation]) -> OutputCutShortError | None:
    """The error for an answer that ended at ``max_tokens``, or ``None`` when it ended on its own."""
    message: BaseMessage | None = result[0].message if result and isinstance(result[0], ChatGeneration) else None
    if message is None or message.response_metadata.get("finish_reason") != "length":
        return None
    usage = getattr(message, "usage_metadata", None) or {}
    tokens = usage.get("output_tokens", "max_tokens")
    text = message.content or getattr(message, "invalid_tool_calls", "")
    return OutputCutShortError(
        f"the structured answer stopped at max_tokens ({tokens} tokens) before it was complete, so it cannot "
        f"be parsed: {text!r:.120}; raise max_tokens (ChatGuide(max_tokens=...), or "
        "llm.bind(max_tokens=...).with_structured_output(...)) to leave room for every field",
        llm_output=str(text),
    )


class _Complete:
    """Mixed into LangChain's parsers: an answer cut by ``max_tokens`` raises :class:`OutputCutShortError`.

    Partial results (streaming) are parsed as LangChain parses them; only the final parse checks.
    """

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        try:
            parsed = super().parse_result(result, partial=partial)  # type: ignore[misc]
        except OutputParserException as error:
            cut = None if partial else _cut_short(result)
            if cut is not None:
                raise cut from error
            raise
        cut = None if partial or parsed is not None else _cut_short(result)
        if cut is not None:  # a forced tool call cut short leaves no call to parse
            raise cut
        return parsed


class _PydanticToolsParser(_Complete, PydanticToolsParser):
    pass


class _JsonOutputKeyToolsParser(_Complete, JsonOutputKeyToolsParser):
    pass


class _PydanticOutputParser(_Complete, PydanticOutputParser):
    pass


class _JsonOutputParser(_Complete, JsonOutputParser):
    pass


def structured_parser(schema: Any, method: StructuredMethod) -> OutputParserLike:
    """LangChain's parser for ``method``: tool-call parsers for function calling, JSON parsers otherwise.

    An answer that stopped at ``max_tokens`` before it was complete raises :class:`OutputCutShortError`.
    """
    if method == "function_calling":
        if is_pydantic_schema(schema):
            return _PydanticToolsParser(tools=[schema], first_tool_only=True)
        name = convert_to_openai_tool(schema)["function"]["name"]
        return _JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    if is_pydantic_schema(schema):
        return _PydanticOutputParser(pydantic_object=schema)
    return _JsonOutputParser()


def with_raw(llm: Runnable[LanguageModelInput, Any], parser: OutputParserLike) -> Runnable[LanguageModelInput, Any]:
    """``{"raw", "parsed", "parsing_error"}``: LangChain's ``include_raw=True`` shape; a parse error is returned."""
    parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    no_parse = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parse.with_fallbacks([no_parse], exception_key="parsing_error")


def count_prompt_tokens(engine: GuideEngine, prompt: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """Prompt tokens of ``prompt`` with ``tools``, rendered as the engine renders a request (tags excluded)."""
    return len(engine.encode(prompt, tools=tools or None).input_ids)
