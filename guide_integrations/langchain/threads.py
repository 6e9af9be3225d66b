"""Drive the engine's blocking calls from asyncio without blocking the event loop.

The engine has no async API: a :class:`~guide_engine.GenerationStream` decodes one step per
``next()``. :func:`astream_steps` runs the stream's creation (which may load the model and
tokenizes the prompt) and every step on one worker thread of its own, so the loop stays free
and one request's torch work stays on one thread. Cancelling the consuming task stops decoding
after the step in flight; the stream is closed on the worker once that step returns, never
while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor

from guide_engine import GenerationResult, GenerationStream

__all__ = ["astream_steps"]

_DONE = object()


def _step(stream: GenerationStream) -> object:
    # StopIteration cannot cross a Future, so the end travels as a sentinel.
    return next(stream, _DONE)


async def astream_steps(open_stream: Callable[[], GenerationStream]) -> AsyncIterator[str | GenerationResult]:
    """Yield the text pieces of ``open_stream()``, then its :class:`GenerationResult`."""
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guide-stream")
    stream: GenerationStream | None = None
    pending: Future | None = None
    try:
        pending = worker.submit(open_stream)
        stream = await asyncio.wrap_future(pending)
        while True:
            pending = worker.submit(_step, stream)
            piece = await asyncio.wrap_future(pending)
            if piece is _DONE:
                break
            yield piece  # type: ignore[misc]
        if stream.result is None:
            raise RuntimeError("the generation stream ended without a result")
        yield stream.result
    finally:
        if stream is not None:
            opened = stream
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: opened.close())
            else:
                opened.close()
        worker.shutdown(wait=False)
