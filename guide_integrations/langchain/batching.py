"""``batch``/``abatch`` as real batches: the calls are decoded together, then LangChain runs each as usual.

LangChain's default ``batch`` runs ``invoke`` per input on a thread pool (``abatch``: ``ainvoke``
per input, gathered), each input with its own run: callbacks, run id, ``on_llm_end`` or
``on_llm_error``, ``return_exceptions``, ``max_concurrency``. For a local model that means N
forward passes fighting over the same cores. ChatGuide keeps LangChain's batch as it is and adds
one step before it: it builds the inputs' engine calls (when LangChain will hand every input to
``_generate``; ``ChatGuide.batch`` says when), :func:`prepare` decodes them with
``GuideEngine.generate_batch`` (calls that share their options together, at most ``max_rows``
rows at a time), and each input's ``_generate`` then takes its row's outcome
(:func:`take_prepared`) instead of decoding again. The prepared outcomes travel in a context
variable, which LangChain's executor copies into its worker threads and asyncio into its tasks.

This module takes ready-built :class:`~guide_integrations.langchain.options.EngineCall` objects and
plain values; it never reads the chat model. The trade-off: the runs start once decoding is done,
so a tracer sees the batch's time before the runs rather than inside them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from guide_engine import GuideEngine, GuideError
from guide_engine.errors import GenerationTimeoutError, GuideValueError

from .options import EngineCall
from .outcomes import Outcome

__all__ = ["Prepared", "generate_rows", "key", "prepare", "take_prepared", "using"]

Prepared = dict[str, deque[Outcome]]
"""Engine outcomes by call key; a key holds one outcome per input with that call."""

_PREPARED: ContextVar[Prepared | None] = ContextVar("guide_prepared_batch", default=None)


def prepare(calls: Sequence[EngineCall], max_rows: int) -> Prepared:
    """Decode ``calls`` as engine batches of at most ``max_rows`` rows (blocking), keyed for :func:`take_prepared`."""
    prepared: Prepared = {}
    for call, outcome in zip(calls, generate_rows(calls, max_rows), strict=True):
        prepared.setdefault(key(call), deque()).append(outcome)
    return prepared


@contextmanager
def using(prepared: Prepared) -> Iterator[None]:
    """Make ``prepared`` the outcomes that ``_generate``/``_agenerate`` take while the batch runs."""
    token = _PREPARED.set(prepared)
    try:
        yield
    finally:
        _PREPARED.reset(token)


def take_prepared(call: EngineCall) -> Outcome | None:
    """The prepared outcome of ``call`` (each one taken once), or ``None`` to decode it now."""
    prepared = _PREPARED.get()
    rows = prepared.get(key(call)) if prepared else None
    try:
        return rows.popleft() if rows else None
    except IndexError:  # another thread took the last one
        return None


def key(call: EngineCall) -> str:
    """What identifies a call's answer: model, prompt and options."""
    model = call.model if isinstance(call.model, str) else id(call.model)
    return repr((model, sorted(call.load_kwargs.items()), call.prompt, sorted(call.options.items())))


def generate_rows(calls: Sequence[EngineCall], max_rows: int) -> list[Outcome]:
    """Run every call, in batches of rows sharing their model and options (blocking)."""
    if max_rows < 1:
        raise GuideValueError(f"max_rows must be a positive integer, got {max_rows!r}")
    results: list[Outcome | None] = [None] * len(calls)
    groups: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        model = call.model if isinstance(call.model, str) else id(call.model)
        groups.setdefault(repr((model, sorted(call.options.items()))), []).append(i)
    for rows in groups.values():
        first = calls[rows[0]]
        try:
            engine = first.engine()
        except Exception as error:  # noqa: BLE001 - every row of the group fails with it
            for i in rows:
                results[i] = error
            continue
        for start in range(0, len(rows), max_rows):
            part = rows[start : start + max_rows]
            for i, outcome in zip(part, _generate_part(engine, [calls[i] for i in part], first.options), strict=True):
                results[i] = outcome
    return [outcome if outcome is not None else GuideError("the row was not run") for outcome in results]


def _generate_part(engine: GuideEngine, part: list[EngineCall], options: dict[str, Any]) -> list[Outcome]:
    if len(part) == 1:
        return [_one(engine, part[0])]
    try:
        return list(engine.generate_batch([call.prompt for call in part], **options))
    except GenerationTimeoutError as error:  # the batch ran out of time: each row ends with its own partial
        return [GenerationTimeoutError(str(error), partial) for partial in error.partial]
    except GuideError:
        # A bad prompt (tags, length) fails the whole batch before decoding starts;
        # one by one, each row gets its own answer or its own error.
        return [_one(engine, call) for call in part]
    except Exception as error:  # noqa: BLE001
        return [error] * len(part)


def _one(engine: GuideEngine, call: EngineCall) -> Outcome:
    try:
        return engine.generate(call.prompt, **call.options)
    except Exception as error:  # noqa: BLE001
        return error
