"""Why a JSON schema cannot be enforced, in a sentence a user can act on.

The grammar library rejects some JSON Schema keywords (``uniqueItems``, a ``pattern`` with
look-around, an unknown ``format``) with a terse note (``Unimplemented keys: ["uniqueItems"]``, or
a multi-line regex report). :func:`unsupported_schema_message` names the field, the keyword and
the two ways out: drop the keyword, or keep it out of the schema and validate after generation.
Pure Python: the caller passes the function that tries a schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["unsupported_schema_message"]

SchemaCheck = Callable[[Mapping[str, Any]], "str | None"]
"""Tries to compile a schema: the grammar library's error, or ``None`` when it compiles."""

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def unsupported_schema_message(schema: Mapping[str, Any], what: str, error: str, check: SchemaCheck) -> str:
    """The whole message for a schema the grammar cannot enforce: which field, which keyword, what to do.

    Args:
        schema: the schema as the user gave it.
        what: what the schema is, for the message (``"response_format schema"``, ``"tool 'f' parameters"``).
        error: the grammar library's error for the whole schema.
        check: compiles one schema, returning the library's error or ``None``.
    """
    path, field, field_error = _deepest_failing_field(schema, check)
    reason = _reason(field_error or error)
    keyword = _keyword(field_error or error)
    where = f"field {path!r}" if path else "the schema"
    if keyword is None:
        return (
            f"{what} cannot be enforced: {where}: {reason}; simplify that part, or keep it out of the schema "
            "and validate the answer after generation"
        )
    value = field.get(keyword)
    shown = f" {json.dumps(value)}" if value is not None and keyword == "pattern" else ""
    return (
        f"{what} cannot be enforced: {where} uses {keyword!r}{shown}, which the grammar does not support "
        f"({reason}); drop {keyword!r} from that field, or keep it out of the schema and validate the answer "
        "after generation"
    )


def _reason(error: str) -> str:
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    said = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    return said[-1] if said else " ".join(lines)


def _keyword(error: str) -> str | None:
    if "regex parse error" in error or "regex" in error.lower():
        return "pattern"
    unimplemented = re.search(r'Unimplemented keys: \["([^"]+)"', error)
    if unimplemented:
        return unimplemented.group(1)
    if error.startswith("Unknown format"):
        return "format"
    return None


def _fields(schema: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every sub-schema with its path (``"tags"``, ``"address.city"``, ``"tags[]"``), parents first."""
    if not isinstance(schema, Mapping):
        return
    yield path, schema
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), Mapping) else ():
            prefix = "" if key == "properties" else f"{key}/"
            yield from _fields(sub, f"{path}.{prefix}{name}" if path else f"{prefix}{name}")
    for key in _SUBSCHEMA_ONE:
        if isinstance(schema.get(key), Mapping):
            yield from _fields(schema[key], f"{path}[]" if key == "items" else f"{path}/{key}")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or ()):
            yield from _fields(sub, f"{path}/{key}[{i}]")


def _deepest_failing_field(schema: Mapping[str, Any], check: SchemaCheck) -> tuple[str, Mapping[str, Any], str | None]:
    """The deepest sub-schema that fails alone: its path, itself and its error (``("", schema, None)`` if none)."""
    definitions = {key: schema[key] for key in ("$defs", "definitions") if key in schema}
    found: tuple[str, Mapping[str, Any], str | None] = ("", schema, None)
    for path, sub in _fields(schema, ""):
        if not path:
            continue
        error = check({**sub, **definitions})  # references into $defs still resolve
        if error and path.count(".") + path.count("[") >= found[0].count(".") + found[0].count("["):
            found = (path, sub, error)
    return found
