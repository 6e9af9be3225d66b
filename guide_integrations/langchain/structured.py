"""Structured output: a schema in, the engine's ``response_format`` (or a forced tool), LangChain's parsers out.

``with_structured_output`` binds what the engine enforces with its grammar (so every answer parses
and validates, ``docs/design/tools-contract.md``) and parses the answer back with LangChain's own
output parsers, as the partner packages do. An answer that stopped at ``max_tokens`` before it was
complete raises :class:`OutputCutShortError`, which names ``max_tokens`` instead of a JSON error.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from guide_engine.errors import GuideError

__all__ = [
    "OutputCutShortError",
    "StructuredMethod",
    "is_pydantic_schema",
    "json_schema",
    "structured_parser",
    "with_raw",
]

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]


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
