"""One call's settings: the model's fields, overridden by the call's keywords, checked once."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from guide_engine import GuideEngine, GuideError, parse_tags, shared_engine
from guide_engine.loading import DEFAULT_MODEL_NAMES, EMBEDDED_GGUF

from .messages import to_engine_prompt

if TYPE_CHECKING:
    from .chat_model import ChatGuide

__all__ = ["CALL_OPTIONS", "ENGINE_EXTRAS", "Request", "build_request", "model_display_name"]

CALL_OPTIONS = ("model", "temperature", "max_tokens", "top_p", "delta_mid", "layers", "metric", "delta_influence")
"""Fields a call may override, e.g. ``llm.invoke(text, delta_mid=3.0)`` or ``llm.bind(metric=None)``."""

ENGINE_EXTRAS = ("top_k", "seed", "heads")
"""Engine options without a field of their own: set them in ``model_kwargs`` or per call."""

_IGNORED = ("stream",)  # LangChain's own switch between invoke and stream paths
PRIVATE_KEYS = ("guide_run_events",)  # how ChatGuide hands a run's callbacks to ``_stream``


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
    prompt: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The name reported in ``response_metadata["model_name"]``."""
        return model_display_name(self.model)

    def engine(self) -> GuideEngine:
        """The shared engine of this model (loaded on first use, then reused by every caller)."""
        return shared_engine(self.model, **self.load_kwargs)


def model_display_name(model: str | GuideEngine) -> str:
    """A readable model name: the embedded model's file stem, a hub id or path, or a loaded model's name."""
    if isinstance(model, GuideEngine):
        return str(getattr(model.model.config, "_name_or_path", "") or type(model.model).__name__)
    if model in DEFAULT_MODEL_NAMES:
        return EMBEDDED_GGUF.removesuffix(".gguf")
    return str(model)


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
        GuideError: for a keyword ChatGuide does not know.
        MessageError: for a message that cannot be sent (see :func:`to_engine_prompt`).
        TagError: for malformed tags.
    """
    unknown = sorted(set(kwargs) - {*CALL_OPTIONS, *ENGINE_EXTRAS, *_IGNORED, *PRIVATE_KEYS})
    if unknown:
        raise GuideError(
            f"ChatGuide got unknown call option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(CALL_OPTIONS + ENGINE_EXTRAS)}"
        )
    value = {name: kwargs.get(name, getattr(llm, name)) for name in CALL_OPTIONS}
    prompt = to_engine_prompt(messages, escape_tool_messages=llm.escape_tool_messages)
    options: dict[str, Any] = {
        "temperature": value["temperature"],
        "top_p": value["top_p"],
        "stop": list(stop if stop is not None else llm.stop or []),
        "delta_influence": value["delta_influence"],
        **llm.model_kwargs,
        **{name: kwargs[name] for name in ENGINE_EXTRAS if name in kwargs},
    }
    for name, engine_name in (("max_tokens", "max_new_tokens"), ("delta_mid", "delta_mid"), ("layers", "layers")):
        if value[name] is not None:  # None: the engine's own default
            options[engine_name] = value[name]
    if measure and value["metric"] is not None and has_influence_span(prompt):
        options["metric"] = value["metric"]
    load_kwargs = dict(llm.load_kwargs)
    if "model" not in kwargs and llm.gguf_file is not None:
        load_kwargs["gguf_file"] = llm.gguf_file
    return Request(model=value["model"], load_kwargs=load_kwargs, prompt=prompt, options=options)


def has_influence_span(prompt: Sequence[Mapping[str, str]]) -> bool:
    """Whether any message has a non-empty ``<?-> … <-?>`` span (malformed tags raise here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about empty spans once, when it parses
        return any(span.kind == "influence" for message in prompt for span in parse_tags(message["content"]).spans)
