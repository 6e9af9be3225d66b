"""ChatGuide's option vocabulary, and :class:`EngineCall`: one call's model, prompt and engine options.

The lists are written out literally so a reader sees every option once; together they are the
engine's ``REQUEST_OPTIONS`` (tests/test_integration_options.py checks it). ``ChatGuide`` resolves
a call's settings against them (``ChatGuide._engine_call``); this module holds names, not the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guide_engine import GuideEngine, shared_engine
from guide_engine.errors import GuideValueError

from ..core import model_display_name, unknown_options

__all__ = [
    "PER_CALL_OPTIONS",
    "OVERRIDABLE_FIELDS",
    "ENGINE_EXTRAS",
    "FIELD_OPTIONS",
    "UNESCAPED_TEXT_HINT",
    "EngineCall",
    "check_call_options",
]

FIELD_OPTIONS: dict[str, str] = {
    "temperature": "temperature",
    "max_tokens": "max_new_tokens",  # LangChain's name for it
    "top_p": "top_p",
    "delta_mid": "delta_mid",
    "layers": "layers",
    "metric": "metric",
    "delta_influence": "delta_influence",
    "repetition_penalty": "repetition_penalty",
    "timeout": "timeout",
}
"""ChatGuide fields that are engine options, and the engine's name for each."""

OVERRIDABLE_FIELDS = ("model", *FIELD_OPTIONS)
"""Fields a call may override, e.g. ``llm.invoke(text, delta_mid=3.0)`` or ``llm.bind(metric=None)``."""

PER_CALL_OPTIONS = ("tools", "tool_choice", "response_format")
"""Engine options that come with a call, usually bound: ``bind_tools``, ``with_structured_output``, ``bind``."""

ENGINE_EXTRAS = ("top_k", "seed", "heads", "delta_queries", "contrast", "contrast_reference")
"""Engine options without a field of their own: set them in ``model_kwargs`` or per call.

With the fields' engine names, :data:`PER_CALL_OPTIONS` and ``stop`` (LangChain's own argument), they
are the engine's ``REQUEST_OPTIONS``, each once (tests/test_integration_options.py checks it).
"""

LANGCHAIN_KEYWORDS = ("stream", "ls_structured_output_format")
"""Keywords LangChain itself adds to a call (invoke vs stream, tracing metadata): accepted, not engine options."""

OTHER_NAMES = {"max_new_tokens": "max_tokens"}
"""Another framework's name for an option -> ChatGuide's; refused with a message naming ours."""

UNESCAPED_TEXT_HINT = (
    "If that text came from a template variable (a document, a user's input), make it literal: "
    "{'document': escape_documents} | prompt, or build the prompt with GuideChatPromptTemplate, "
    "which escapes every variable"
)
"""Appended to a tag error in a message: the two ways to keep outside text from making spans."""


def check_call_options(kwargs: Mapping[str, Any]) -> None:
    """Refuse a call keyword ChatGuide does not know, naming the allowed ones.

    Raises:
        GuideValueError: for ``max_new_tokens`` (naming ``max_tokens``) or any other unknown keyword.
    """
    for name, ours in OTHER_NAMES.items():
        if name in kwargs:
            raise GuideValueError(f"ChatGuide takes {ours!r} (LangChain's name), not {name!r}")
    unknown = unknown_options(kwargs, {*OVERRIDABLE_FIELDS, *PER_CALL_OPTIONS, *ENGINE_EXTRAS, *LANGCHAIN_KEYWORDS})
    if unknown:
        raise GuideValueError(
            f"ChatGuide got unknown call option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(OVERRIDABLE_FIELDS + PER_CALL_OPTIONS + ENGINE_EXTRAS)}"
        )


@dataclass(frozen=True)
class EngineCall:
    """One engine call, ready to run: which model, which messages, which options.

    Attributes:
        model: the model spec (``"default"``, a hub id, a folder, a ``.gguf`` path) or an engine.
        load_kwargs: how to load it, when it is not loaded yet.
        prompt: the conversation as ``{"role", "content"}`` messages, tags intact.
        options: keyword arguments of ``GuideEngine.generate``/``stream``/``generate_batch``.
    """

    model: str | GuideEngine
    load_kwargs: Mapping[str, Any]
    prompt: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The name reported in ``response_metadata["model_name"]``."""
        return model_display_name(self.model)

    @property
    def may_call_tools(self) -> bool:
        """Whether the answer may hold tool calls (tools are given and ``tool_choice`` is not ``"none"``)."""
        return bool(self.options.get("tools")) and self.options.get("tool_choice") != "none"

    def engine(self) -> GuideEngine:
        """The shared engine of this model (loaded on first use, then reused by every caller)."""
        return shared_engine(self.model, **self.load_kwargs)
