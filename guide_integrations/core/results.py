"""An engine's results as a wrapper reports them: the model's name, usage, a finished stream, asyncio.

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from guide_engine import GenerationResult, GenerationStream, GuideEngine, GuideError
from guide_engine.loading import DEFAULT_MODEL_NAMES, EMBEDDED_GGUF

__all__ = ["agenerate", "astream_pieces", "model_display_name", "stream_result", "token_usage"]


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
