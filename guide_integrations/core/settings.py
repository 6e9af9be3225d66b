"""A wrapper's settings checked as the engine checks them: one range check, one error shape.

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from guide_engine import GuideValueError
from guide_engine.options import MODEL_FREE_OPTIONS, check_option

__all__ = ["SettingsError", "check_engine_setting", "checked_field", "json_schema_format", "unknown_options"]


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
    if engine_name in MODEL_FREE_OPTIONS or (engine_name == "layers" and isinstance(value, str)):
        try:
            check_option(engine_name, value, field)
        except GuideValueError as engine_error:
            return str(engine_error)
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


def unknown_options(given: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The names in ``given`` that are not in ``allowed``, sorted (empty when all are known)."""
    return sorted(set(given) - set(allowed))


def check_engine_setting(engine_name: str, value: Any, setting: str | None = None) -> Any:
    """``value`` if the engine accepts it for ``engine_name``, else the engine's error under the wrapper's name.

    The one range check of every wrapper setting that is an engine option: the wrappers declare
    types only and call this from a pydantic validator, so a bound is written once, in
    :func:`guide_engine.options.request_options` (reached through
    :func:`~guide_engine.options.check_option`, as the ``guide`` command's flags are). Options whose
    check needs a model (layer and head indices, tools, formats) are checked per call by the engine.

    Args:
        engine_name: the engine's name of the option (``max_new_tokens``).
        value: the setting's value; ``None`` (the engine's default) always passes.
        setting: the wrapper's name for it when it differs (``max_tokens``), used in the message.

    Raises:
        GuideValueError: the engine's message, e.g. ``temperature must be a finite number >= 0, got -1``.
    """
    if value is None or engine_name not in MODEL_FREE_OPTIONS:
        return value
    return check_option(engine_name, value, setting)


def checked_field(engine_name: str, given: Any, coerce: Callable[[Any], Any], setting: str | None = None) -> Any:
    """A wrapper field that is an engine option: pydantic's type coercion, then :func:`check_engine_setting`.

    For a ``mode="wrap"`` field validator, ``coerce`` being its handler: ``max_tokens="5"`` becomes
    5 as pydantic makes it, and a value the engine refuses is named as the user gave it
    (``timeout must be > 0 …, got 0``, not ``0.0``).
    """
    typed = coerce(given)
    try:
        return check_engine_setting(engine_name, typed, setting)
    except GuideValueError:
        check_engine_setting(engine_name, given, setting)  # refused as given too: that message names it
        raise


def json_schema_format(json_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI-style ``response_format`` the engine takes for a JSON schema, named by its ``title``.

    Each wrapper turns its framework's forms (a pydantic class, a TypedDict, a function dict) into
    a JSON schema first; this is where every one of them becomes the engine's option.
    """
    if not isinstance(json_schema, Mapping):
        raise GuideValueError(f"a JSON schema must be a dict, got {type(json_schema).__name__}: {json_schema!r}")
    name = str(json_schema.get("title", "response"))
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(json_schema), "strict": True}}
