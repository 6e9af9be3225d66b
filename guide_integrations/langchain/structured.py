"""Structured output: a schema in, the engine's ``response_format`` (or a forced tool), LangChain's parsers out.

``with_structured_output`` binds what the engine enforces with its grammar (so every answer parses
and validates, ``docs/design/tools-contract.md``) and parses the answer back with LangChain's own
output parsers, as the partner packages do.

An answer is parsed into an object only when it is complete. LangChain's JSON parsers accept a
JSON prefix (they stream partial objects that way), so an answer cut by ``max_tokens``, a stop
string or the timeout would parse into a wrong object (``{"name": "Ada", "age": 2`` as ``age=2``).
Here the final parse reads the whole text as strict JSON and raises :class:`OutputCutShortError`
otherwise; a stream yields the partial objects LangChain yields, then the complete object last, or
raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_type_hints, is_typeddict

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, TypeAdapter

from guide_engine.constraints import is_closed_json
from guide_engine.errors import GuideError, GuideValueError

from ..core import json_schema_format
from .tools import ToolLike, format_tools, tool_options

__all__ = [
    "OutputCutShortError",
    "StructuredMethod",
    "is_pydantic_schema",
    "json_schema",
    "structured_parser",
    "structured_runnable",
    "ToolsAndSchemas",
    "with_raw",
]

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]


def json_schema(schema: Mapping[str, Any] | type) -> dict[str, Any]:
    """The whole JSON schema of a pydantic model, TypedDict, OpenAI function dict or JSON schema.

    Pydantic models and TypedDicts keep ``$defs`` and ``$ref`` (pydantic's own schema), so recursive
    and nested models arrive whole; LangChain's ``convert_to_json_schema`` inlines references and
    leaves a recursive list as ``"items": {}``, which lets the grammar accept any value there.
    """
    if isinstance(schema, Mapping) and _is_json_schema(schema):
        return dict(schema)  # a JSON schema as it is
    if is_pydantic_schema(schema):
        return schema.model_json_schema()  # type: ignore[union-attr]
    if isinstance(schema, type) and is_typeddict(schema):
        get_type_hints(schema)  # a forward reference that does not resolve fails here, by name
        return TypeAdapter(schema).json_schema()
    return convert_to_json_schema(schema)  # type: ignore[arg-type]


_JSON_SCHEMA_ROOTS = frozenset({"type", "$ref", "$defs", "anyOf", "oneOf", "allOf", "enum", "const", "properties"})


def _is_json_schema(schema: Mapping[str, Any]) -> bool:
    """A JSON schema (``Node.model_json_schema()``'s root ``$ref`` too), not an OpenAI function or tool dict."""
    return bool(_JSON_SCHEMA_ROOTS & schema.keys()) and "function" not in schema and "parameters" not in schema


def is_pydantic_schema(schema: Any) -> bool:
    """Whether ``schema`` is a pydantic model class (parsed into instances) rather than a dict-like schema."""
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def structured_tool(schema: ToolLike) -> dict[str, Any]:
    """The tool that ``method="function_calling"`` forces: LangChain's tool dict, the whole schema its parameters."""
    tool = format_tools([schema])[0]
    if is_pydantic_schema(schema) or (isinstance(schema, type) and is_typeddict(schema)):
        parameters = json_schema(schema)  # type: ignore[arg-type]
        parameters.pop("title", None)
        parameters.pop("description", None)  # the tool's own description says it
        tool["function"]["parameters"] = parameters
    return tool


class OutputCutShortError(OutputParserException, GuideError):
    """A structured answer stopped before it was complete: at ``max_tokens``, a stop string or the timeout.

    LangChain's ``OutputParserException`` (so ``include_raw=True`` returns it as ``parsing_error``)
    and a :class:`~guide_engine.GuideError`; the message says why the answer stopped and what to
    change.
    """

    def __init__(self, message: str, llm_output: str) -> None:
        super().__init__(message, llm_output=llm_output)
        self.args = (message,)  # the message alone, without LangChain's troubleshooting link


def _message(result: list[Generation]) -> BaseMessage | None:
    return result[0].message if result and isinstance(result[0], ChatGeneration) else None


def _cut_short_error(message: BaseMessage, text: str) -> OutputCutShortError:
    """The error for an answer that stopped before it was complete, naming why and what to raise."""
    reason = message.response_metadata.get("finish_reason")
    usage = getattr(message, "usage_metadata", None) or {}
    tokens = usage.get("output_tokens", "max_tokens")
    if reason == "length":
        why = f"stopped at max_tokens ({tokens} tokens)"
        advice = (
            "raise max_tokens (ChatGuide(max_tokens=...), llm.bind(max_tokens=...).with_structured_output(...), "
            "or .invoke(..., max_tokens=...)) to leave room for every field"
        )
    elif reason == "timeout":
        why = "stopped at the timeout"
        advice = "raise timeout"
    else:
        why = f"stopped (finish_reason {reason!r}: a stop string cut it)"
        advice = "leave out the stop strings that can occur inside the JSON"
    return OutputCutShortError(
        f"the structured answer {why} before it was complete, so it is not parsed: {text!r:.120}; {advice}",
        llm_output=text,
    )


class _Complete:
    """Mixed into LangChain's parsers: the final parse takes only a complete answer.

    Partial parses (a stream's growing object) are LangChain's own. The final parse raises
    :class:`OutputCutShortError` for an answer that stopped before it was complete, and a stream
    ends with the final parse: the complete object, or the error.
    """

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        if not partial:
            self._check_complete(result)
        return super().parse_result(result, partial=partial)  # type: ignore[misc]

    def _check_complete(self, result: list[Generation]) -> None:
        raise NotImplementedError

    def _transform(self, input: Iterator[str | BaseMessage]) -> Iterator[Any]:
        chunks: list[Any] = []
        last = None
        for last in super()._transform(_kept(input, chunks)):  # type: ignore[misc]
            yield last
        final = self.parse_result([ChatGeneration(message=_joined(chunks))])
        if final != last:
            yield final

    async def _atransform(self, input: AsyncIterator[str | BaseMessage]) -> AsyncIterator[Any]:
        chunks: list[Any] = []
        last = None
        async for last in super()._atransform(_akept(input, chunks)):  # type: ignore[misc]
            yield last
        final = self.parse_result([ChatGeneration(message=_joined(chunks))])
        if final != last:
            yield final


def _kept(chunks: Iterator[Any], kept: list[Any]) -> Iterator[Any]:
    for chunk in chunks:
        kept.append(chunk)
        yield chunk


async def _akept(chunks: AsyncIterator[Any], kept: list[Any]) -> AsyncIterator[Any]:
    async for chunk in chunks:
        kept.append(chunk)
        yield chunk


def _joined(chunks: list[Any]) -> BaseMessage:
    """The whole streamed message (LangChain sums message chunks, tool-call chunks into calls)."""
    if not chunks:
        return AIMessage(content="")
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    if isinstance(whole, str):
        return AIMessage(content=whole)
    return whole if isinstance(whole, BaseMessage) else AIMessage(content=str(whole))


# The mixins come before LangChain's parser in the bases (their parse_result wraps the parser's), and
# `_transform`/`_atransform` override LangChain's (private, stable since langchain-core 0.1) stream loop.
class _CompleteJson(_Complete):
    """The answer's whole text is strict JSON, or it stopped before it was complete."""

    def _check_complete(self, result: list[Generation]) -> None:
        message = _message(result)
        text = result[0].text if result else ""
        reason = message.response_metadata.get("finish_reason") if message is not None else None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            if message is not None and reason is not None:
                raise _cut_short_error(message, text) from error
            raise OutputParserException(f"the structured answer is not JSON: {text!r:.120}", llm_output=text) from None
        if message is not None and reason in ("length", "timeout") and not is_closed_json(value):
            raise _cut_short_error(message, text)  # "12" may be the start of 12345: only a closing mark proves the end


class _CompleteCall(_Complete):
    """The answer holds the forced tool call, finished; a call cut short is no call."""

    def _check_complete(self, result: list[Generation]) -> None:
        message = _message(result)
        if message is None:
            return
        if getattr(message, "tool_calls", None) and not getattr(message, "invalid_tool_calls", None):
            return
        unfinished = [str(call.get("args")) for call in getattr(message, "invalid_tool_calls", None) or []]
        text = " ".join(unfinished) or str(message.content)
        if message.response_metadata.get("finish_reason") in ("length", "stop", "timeout"):
            raise _cut_short_error(message, text)
        raise OutputParserException(f"the answer holds no tool call: {text!r:.120}", llm_output=text)


class _PydanticToolsParser(_CompleteCall, PydanticToolsParser):
    pass


class _JsonOutputKeyToolsParser(_CompleteCall, JsonOutputKeyToolsParser):
    pass


class _PydanticOutputParser(_CompleteJson, PydanticOutputParser):
    pass


class _JsonOutputParser(_CompleteJson, JsonOutputParser):
    pass


def structured_parser(schema: Any, method: StructuredMethod) -> OutputParserLike:
    """LangChain's parser for ``method``: tool-call parsers for function calling, JSON parsers otherwise.

    An answer that stopped before it was complete raises :class:`OutputCutShortError`.
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
    """``{"raw", "parsed", "parsing_error"}``: LangChain's ``include_raw=True`` shape; a parse error is returned.

    ``llm`` is the sequence's first step, so the keywords of ``invoke``/``stream``/``batch``
    (``max_tokens=...``) reach it, as they do without ``include_raw``.
    """

    def raw_and_parsed(raw: BaseMessage) -> dict[str, Any]:
        try:
            return {"raw": raw, "parsed": parser.invoke(raw), "parsing_error": None}
        except OutputParserException as error:
            return {"raw": raw, "parsed": None, "parsing_error": error}

    return llm | RunnableLambda(raw_and_parsed, name="raw_and_parsed")


_NO_TOOLS: dict[str, Any] = {"tools": None, "tool_choice": None}
"""Bound tools give way to the schema (``None`` is "not given"), as LangChain's own binding drops them."""


def structured_runnable(
    llm: ToolsAndSchemas,
    schema: Any,
    method: StructuredMethod,
    include_raw: bool,
    unsupported: Mapping[str, Any],
) -> Runnable[LanguageModelInput, Any]:
    """``with_structured_output`` of ``llm`` (``ChatGuide`` or a binding of it, whose keywords stay bound)."""
    if unsupported:
        raise GuideValueError(
            f"with_structured_output got unsupported argument(s) {', '.join(map(repr, sorted(unsupported)))}; "
            "it takes schema, method, include_raw and strict"
        )
    if schema is None and method != "json_mode":
        raise GuideValueError(f"method={method!r} needs a schema; pass one, or use method='json_mode'")
    trace = {"kwargs": {"method": method}, "schema": schema}
    bound: Runnable[LanguageModelInput, Any]
    if method == "function_calling":
        tool = structured_tool(schema)
        bound = llm.bind(**tool_options([tool], tool["function"]["name"]), ls_structured_output_format=trace)
    elif method == "json_schema":
        bound = llm.bind(
            response_format=json_schema_format(json_schema(schema)), **_NO_TOOLS, ls_structured_output_format=trace
        )
    elif method == "json_mode":
        bound = llm.bind(response_format={"type": "json_object"}, **_NO_TOOLS, ls_structured_output_format=trace)
    else:
        raise GuideValueError(
            f"method {method!r} is not supported; use 'json_schema', 'function_calling' or 'json_mode'"
        )
    parser = structured_parser(schema, method)
    return with_raw(bound, parser) if include_raw else bound | parser


class ToolsAndSchemas:
    """``bind_tools`` and ``with_structured_output`` over ``self.bind``, for ``ChatGuide`` and its bindings.

    ``ChatGuide.bind`` returns a ``GuideBinding``, whose ``bind`` merges options; both classes take
    these two methods from here, so options bound before either call stay bound.
    """

    if TYPE_CHECKING:  # ChatGuide.bind and RunnableBinding.bind; not defined here, so the MRO finds theirs

        def bind(self, **kwargs: Any) -> Runnable[LanguageModelInput, Any]: ...

    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Let the model call ``tools``; its calls come back as ``AIMessage.tool_calls``.

        Args:
            tools: ``BaseTool`` objects, functions, pydantic models, TypedDicts or OpenAI-style tool
                dicts (anything ``convert_to_openai_tool`` accepts).
            tool_choice: ``None`` or ``"auto"`` (text or calls), ``"any"``/``"required"`` (at least
                one call), ``"none"`` (text only), a tool's name or ``{"type": "function",
                "function": {"name": ...}}`` (that tool).
            strict: accepted for compatibility; calls always follow the tools' schemas (the
                grammar enforces them).
            **kwargs: other call options to bind (``delta_mid``, ``max_tokens``, ...).
        """
        return self.bind(**tool_options(tools, tool_choice), **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: StructuredMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable whose answers follow ``schema``: pydantic instances for a model, dicts otherwise.

        An answer is parsed only when it is complete: one cut by ``max_tokens``, a stop string or
        the timeout raises :class:`~guide_integrations.langchain.OutputCutShortError` (with
        ``include_raw=True`` it is the ``parsing_error``, and ``parsed`` is ``None``). Options
        bound before (``llm.bind(max_tokens=...)``) and given per call (``.invoke(q,
        max_tokens=...)``) reach the model.

        Args:
            schema: a pydantic model, a TypedDict, a JSON schema or an OpenAI-style tool dict
                (``json_mode`` also takes ``None``: any JSON object, returned as a dict). Models
                and TypedDicts keep their whole schema (``$defs``, recursion, unions, enums).
            method: ``"json_schema"`` (the answer is JSON that validates against the schema,
                enforced by the grammar), ``"function_calling"`` (a forced call of a tool made from
                the schema) or ``"json_mode"`` (any JSON object; describe the schema in the prompt).
            include_raw: return ``{"raw", "parsed", "parsing_error"}`` instead of the parsed value.
            strict: accepted for compatibility; ``json_schema`` and ``function_calling`` are always
                strict (the grammar enforces the schema).
        """
        return structured_runnable(self, schema, method, include_raw, kwargs)
