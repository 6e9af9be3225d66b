"""GuideLLM's option vocabulary: HuggingFaceLLM's ``generate_kwargs``, refused names, one call's options.

``GuideLLM`` speaks LlamaIndex's and transformers' language (``max_new_tokens``, ``context_window``,
``generate_kwargs``) and hands the engine its own option names (:data:`CALL_OPTIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guide_engine.errors import GuideValueError

from ..core import has_influence_span, unknown_options

__all__ = [
    "CALL_OPTIONS",
    "FIELD_OPTIONS",
    "GENERATE_KWARGS",
    "PER_CALL_OPTIONS",
    "call_options",
    "check_names",
    "from_generate_kwargs",
]

FIELD_OPTIONS: tuple[str, ...] = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "delta_mid",
    "delta_influence",
    "layers",
    "heads",
    "metric",
    "delta_queries",
    "contrast",
    "contrast_reference",
    "repetition_penalty",
    "timeout",
)
"""Engine options that are also ``GuideLLM`` fields of the same name (a call's keyword overrides the field)."""

PER_CALL_OPTIONS: tuple[str, ...] = ("response_format", "tools", "tool_choice")
"""Engine options a call brings itself (structured output and tools): they have no field."""

CALL_OPTIONS: tuple[str, ...] = (*FIELD_OPTIONS, *PER_CALL_OPTIONS)
"""Every keyword a ``complete``/``chat`` call accepts; together, the engine's ``REQUEST_OPTIONS``."""

GENERATE_KWARGS: tuple[str, ...] = (
    "do_sample",
    "max_new_tokens",
    "repetition_penalty",
    "stop_strings",
    "temperature",
    "top_k",
    "top_p",
)
"""The transformers ``generate()`` keywords ``generate_kwargs`` may hold."""

_REFUSED = {
    "max_tokens": "GuideLLM takes max_new_tokens (the LlamaIndex and transformers name), not max_tokens",
    "num_output": "GuideLLM takes max_new_tokens; metadata.num_output reports it",
    "stopping_ids": "GuideLLM takes stop (a list of strings), not stopping_ids",
}


def check_names(names: Any, where: str) -> None:
    """Refuse another framework's name for one of ours, with the name to use instead."""
    for name in names:
        if name in _REFUSED:
            raise GuideValueError(f"{where}: {_REFUSED[name]}")


def from_generate_kwargs(generate_kwargs: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The GuideLLM fields that HuggingFaceLLM-style ``generate_kwargs`` set.

    ``do_sample=False`` means greedy (``temperature`` 0, as transformers ignores the temperature
    then); ``do_sample=True`` without a temperature samples at 1.0, transformers' default;
    ``stop_strings`` becomes ``stop``. A field given both directly and in ``generate_kwargs`` with
    different values is refused, as is any other key.

    Args:
        generate_kwargs: the ``generate_kwargs`` the user passed.
        fields: the other fields the user passed.

    Raises:
        GuideValueError: an unknown key, a conflict, or ``do_sample=True`` with temperature 0.
    """
    if not isinstance(generate_kwargs, Mapping):
        raise GuideValueError(f"generate_kwargs must be a dict, got {type(generate_kwargs).__name__}")
    unknown = sorted(set(generate_kwargs) - set(GENERATE_KWARGS))
    if unknown:
        raise GuideValueError(
            f"generate_kwargs has unsupported key(s) {unknown}; GuideLLM maps {list(GENERATE_KWARGS)} "
            "(other GuideLLM options, e.g. seed, delta_mid, timeout, are fields of their own)"
        )
    mapped = {("stop" if k == "stop_strings" else k): v for k, v in generate_kwargs.items() if k != "do_sample"}
    if "stop" in mapped and isinstance(mapped["stop"], str):
        mapped["stop"] = [mapped["stop"]]
    do_sample = generate_kwargs.get("do_sample")
    if do_sample is False:
        mapped["temperature"] = 0.0
    elif do_sample is True:
        temperature = mapped.get("temperature", fields.get("temperature"))
        if temperature is None:
            mapped["temperature"] = 1.0
        elif temperature == 0:
            raise GuideValueError("generate_kwargs do_sample=True needs a temperature > 0 (0 is greedy decoding)")
    for name, value in mapped.items():
        if name in fields and fields[name] != value:
            raise GuideValueError(
                f"{name} is given twice, as {name}={fields[name]!r} and through generate_kwargs ({value!r}); "
                "give it once"
            )
    return mapped


def call_options(fields: Mapping[str, Any], prompt: Any, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The engine options of one ``complete``/``chat`` call: the LLM's fields, the call's keywords winning.

    Args:
        fields: the ``GuideLLM``'s value of every name in :data:`FIELD_OPTIONS`.
        prompt: the prompt as the engine gets it (a string or ``{"role", "content"}`` messages); a
            ``metric`` is kept only when it has a ``<?->`` span (nothing to measure otherwise).
        call_kwargs: the keywords the call was given.

    Raises:
        GuideValueError: another framework's name (``max_tokens``) or an unknown option, naming the allowed ones.
        TagError: the prompt's tags are malformed (found here, before any model runs).
    """
    check_names(call_kwargs, "GuideLLM call")
    unknown = unknown_options(call_kwargs, CALL_OPTIONS)
    if unknown:
        raise GuideValueError(f"unknown generation option(s) {unknown}; GuideLLM accepts {sorted(CALL_OPTIONS)}")
    options = {name: call_kwargs.get(name, fields[name]) for name in FIELD_OPTIONS}
    options.update({name: call_kwargs[name] for name in PER_CALL_OPTIONS if call_kwargs.get(name) is not None})
    if options["metric"] is not None and not has_influence_span(prompt):
        options["metric"] = None
    return options
