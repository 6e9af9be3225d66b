"""One call's settings: the model's fields, overridden by the call's keywords, checked once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from guide_engine import GuideEngine, shared_engine
from guide_engine.errors import GuideValueError

from ..core import check_message_tags, model_display_name, unknown_options
from .messages import to_engine_prompt

if TYPE_CHECKING:
    from .chat_model import ChatGuide

__all__ = ["BOUND_OPTIONS", "CALL_OPTIONS", "ENGINE_EXTRAS", "Request", "build_request", "model_display_name"]

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

CALL_OPTIONS = ("model", *FIELD_OPTIONS)
"""Fields a call may override, e.g. ``llm.invoke(text, delta_mid=3.0)`` or ``llm.bind(metric=None)``."""

BOUND_OPTIONS = ("tools", "tool_choice", "response_format")
"""Engine options that come with a call, usually bound: ``bind_tools``, ``with_structured_output``, ``bind``."""

ENGINE_EXTRAS = ("top_k", "seed", "heads", "delta_queries", "contrast")
"""Engine options without a field of their own: set them in ``model_kwargs`` or per call.

With the fields' engine names, :data:`BOUND_OPTIONS` and ``stop`` (LangChain's own argument), they
are the engine's ``REQUEST_OPTIONS``, each once (tests/test_integration_options.py checks it).
"""

_IGNORED = ("stream", "ls_structured_output_format")  # LangChain's own: invoke vs stream, tracing metadata
_OTHER_NAMES = {"max_new_tokens": "max_tokens"}  # another framework's name -> ChatGuide's
UNESCAPED_TEXT_HINT = (
    "If that text came from a template variable (a document, a user's input), make it literal: "
    "{'document': escape_documents} | prompt, or build the prompt with GuideChatPromptTemplate, "
    "which escapes every variable"
)
"""Appended to a tag error in a message: the two ways to keep outside text from making spans."""


@dataclass(frozen=True)
class Request:
    """What the engine is asked: which model, which messages, which options.

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


def build_request(
    llm: ChatGuide,
    messages: Sequence[BaseMessage],
    stop: list[str] | None,
    kwargs: Mapping[str, Any],
    *,
    measure: bool = True,
) -> Request:
    """Resolve the settings of one call.

    ``measure=False`` skips the Influence pass: no callback handler could receive it.

    Raises:
        GuideValueError: for a keyword ChatGuide does not know.
        MessageError: for a message that cannot be sent (see :func:`to_engine_prompt`).
        TagError: for malformed tags, naming the message and how to escape outside text.
    """
    for name, ours in _OTHER_NAMES.items():
        if name in kwargs:
            raise GuideValueError(f"ChatGuide takes {ours!r} (LangChain's name), not {name!r}")
    unknown = unknown_options(kwargs, {*CALL_OPTIONS, *BOUND_OPTIONS, *ENGINE_EXTRAS, *_IGNORED})
    if unknown:
        raise GuideValueError(
            f"ChatGuide got unknown call option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(CALL_OPTIONS + BOUND_OPTIONS + ENGINE_EXTRAS)}"
        )
    value = {name: kwargs.get(name, getattr(llm, name)) for name in CALL_OPTIONS}
    prompt = to_engine_prompt(messages, escape_tool_messages=llm.escape_tool_messages)
    options: dict[str, Any] = {
        "stop": list(stop if stop is not None else llm.stop or []),
        **llm.model_kwargs,
        **{name: kwargs[name] for name in ENGINE_EXTRAS if name in kwargs},
        **{name: kwargs[name] for name in BOUND_OPTIONS if kwargs.get(name) is not None},
    }
    for name, engine_name in FIELD_OPTIONS.items():
        if name != "metric" and value[name] is not None:  # None: the engine's own default
            options[engine_name] = value[name]
    parsed = check_message_tags(prompt, UNESCAPED_TEXT_HINT)  # a tag error names its message
    if measure and value["metric"] is not None and any(s.kind == "influence" for p in parsed for s in p.spans):
        options["metric"] = value["metric"]
    load_kwargs = dict(llm.load_kwargs)
    if "model" not in kwargs and llm.gguf_file is not None:
        load_kwargs["gguf_file"] = llm.gguf_file
    return Request(model=value["model"], load_kwargs=load_kwargs, prompt=prompt, options=options)
