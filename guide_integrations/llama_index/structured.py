"""Structured output for ``GuideLLM``: a pydantic class becomes the engine's ``response_format``.

LlamaIndex's default programs ask the model to *write* JSON (``LLMTextCompletionProgram``) or to
call a tool named after the class (``FunctionCallingProgram``) and parse what comes back; a
135M model echoes the schema instead. ``GuideLLM`` hands the class's JSON schema to the engine's
constrained decoder, so the output parses and validates whatever the model's size.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import ChatResponse
from pydantic import BaseModel

from guide_engine import GuideError
from guide_engine.errors import GuideValueError

__all__ = ["parse_structured", "pydantic_json_schema"]


def pydantic_json_schema(output_cls: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a pydantic class (its ``model_json_schema()``), which LlamaIndex's programs use."""
    if not (isinstance(output_cls, type) and issubclass(output_cls, BaseModel)):
        raise GuideValueError(
            f"output_cls must be a pydantic BaseModel subclass, got {output_cls!r}; "
            "wrap a TypedDict or a dict schema in a pydantic model"
        )
    return output_cls.model_json_schema()


def parse_structured(output_cls: type[BaseModel], response: ChatResponse) -> BaseModel:
    """The validated object of a constrained chat response.

    Raises:
        GuideValueError: the output stopped at ``max_new_tokens`` before the JSON was complete
            (the grammar keeps it valid, but cannot shorten it).
        GuideError: the engine stopped for another reason (a stop string cut the JSON).
    """
    text = response.message.content or ""
    try:
        return output_cls.model_validate_json(text)
    except ValueError as error:
        reason = response.additional_kwargs.get("finish_reason")
        tokens = response.additional_kwargs.get("completion_tokens")
        if reason == "length":
            raise GuideValueError(
                f"the {output_cls.__name__} JSON was cut at max_new_tokens ({tokens} tokens) before it was "
                f"complete; raise max_new_tokens (got {text[:80]!r})"
            ) from error
        raise GuideError(
            f"the {output_cls.__name__} output did not validate (finish reason {reason!r}); "
            f"a stop string may have cut it: {text[:80]!r}"
        ) from error
