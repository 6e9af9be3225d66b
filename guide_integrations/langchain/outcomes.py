"""What one engine call ends in, its result or its error; the one retry rule; "result or raise".

``_generate`` and ``_agenerate`` run the same loop, one blocking and one from asyncio: take the
batch row's outcome if ``batch`` prepared one, run the call while :func:`runs_again` says so,
then :func:`result_or_raise`. A local model has one transient failure, the wall-clock
``timeout``; every other error is raised at once.
"""

from __future__ import annotations

import asyncio

from guide_engine import GenerationResult, GuideError
from guide_engine.errors import GenerationTimeoutError

from ..core import agenerate
from .options import EngineCall

__all__ = ["Outcome", "agenerate_outcome", "generate_outcome", "result_or_raise", "runs_again"]

Outcome = GenerationResult | BaseException
"""An engine call's result, or the error it raised (a batch row keeps its own error)."""


def runs_again(outcome: Outcome | None, runs: int, max_retries: int) -> bool:
    """Whether to run the call (again): it has not run yet, or it timed out and ``max_retries`` allows another run.

    Args:
        outcome: the last run's outcome; ``None`` before the first run.
        runs: how many runs there were (a prepared batch row counts as one).
        max_retries: how many more runs a timed-out call gets.
    """
    if outcome is None:
        return True
    return isinstance(outcome, GenerationTimeoutError) and runs <= max_retries


def generate_outcome(call: EngineCall) -> Outcome:
    """Run ``call`` (blocking); a timeout comes back as the outcome, any other error is raised."""
    try:
        return call.engine().generate(call.prompt, **call.options)
    except GenerationTimeoutError as error:
        return error


async def agenerate_outcome(call: EngineCall) -> Outcome:
    """:func:`generate_outcome` from asyncio: each decoding step on a worker thread, cancellable between steps."""
    try:
        engine = await asyncio.to_thread(call.engine)  # a first load (or another caller's) must not block the loop
        return await agenerate(engine, call.prompt, call.options)
    except GenerationTimeoutError as error:
        return error


def result_or_raise(outcome: Outcome | None) -> GenerationResult:
    """The result, or the error the call ended in, raised."""
    if isinstance(outcome, BaseException):
        raise outcome
    if outcome is None:
        raise GuideError("the engine call was never run")
    return outcome
