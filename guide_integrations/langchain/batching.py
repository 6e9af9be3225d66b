"""``batch``/``abatch`` as real batches: the inputs are decoded together, then LangChain runs each as usual.

LangChain's default ``batch`` runs ``invoke`` per input on a thread pool (``abatch``: ``ainvoke``
per input, gathered), each input with its own run: callbacks, run id, ``on_llm_end`` or
``on_llm_error``, ``return_exceptions``, ``max_concurrency``. For a local model that means N
forward passes fighting over the same cores. ChatGuide keeps LangChain's batch as it is and adds
one step before it: :func:`prepare` decodes the inputs' engine requests with
``GuideEngine.generate_batch`` (rows that share their options together, at most
``max_concurrency`` rows at a time), and each input's ``_generate`` then takes its row's result
(:func:`take_prepared`) instead of decoding again. The prepared results travel in a context
variable, which LangChain's executor copies into its worker threads and asyncio into its tasks.

Nothing is prepared when LangChain would not call ``_generate`` for every input: a cache
(consulted per input), a rate limiter, streaming (``streaming=True`` or a streaming handler such
as ``astream_events``'), a single input. An input whose conversion or tags fail is not prepared
either; its run raises the error by itself. The trade-off: the runs start once decoding is done,
so a tracer sees the batch's time before the runs rather than inside them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list

from guide_engine import GenerationResult, GuideEngine, GuideError

from .options import Request, build_request

if TYPE_CHECKING:
    from .chat_model import ChatGuide

__all__ = ["Prepared", "generate_rows", "prepare", "take_prepared", "using"]

Outcome = GenerationResult | BaseException
Prepared = dict[str, deque[Outcome]]
"""Engine outcomes by request key; a key holds one outcome per input with that request."""

_PREPARED: ContextVar[Prepared | None] = ContextVar("guide_prepared_batch", default=None)


def prepare(
    llm: ChatGuide,
    inputs: Sequence[Any],
    config: RunnableConfig | Sequence[RunnableConfig] | None,
    kwargs: Mapping[str, Any],
) -> Prepared:
    """Decode every input that LangChain will hand to ``_generate``, as engine batches (blocking)."""
    configs = get_config_list(config, len(inputs))
    if len(inputs) < 2 or llm.rate_limiter is not None or llm.streaming:
        return {}
    if not (llm.cache is False or (llm.cache is None and get_llm_cache() is None)):
        return {}  # a cache is consulted per input
    options = dict(kwargs)
    stop = options.pop("stop", None)
    requests: list[Request] = []
    for item, item_config in zip(inputs, configs, strict=True):
        handlers = CallbackManager.configure(item_config.get("callbacks"), llm.callbacks, llm.verbose).handlers
        if any(hasattr(handler, "tap_output_iter") for handler in handlers):
            return {}  # a streaming handler (astream_events): LangChain calls `_stream`
        try:  # measure a row only when its run has a handler to receive the result
            requests.append(build_request(llm, _messages(item), stop, options, measure=bool(handlers)))
        except Exception:  # noqa: BLE001 - this input's own run raises it
            continue
    prepared: Prepared = {}
    max_rows = configs[0].get("max_concurrency") or len(inputs)
    for request, outcome in zip(requests, generate_rows(requests, max_rows), strict=True):
        prepared.setdefault(key(request), deque()).append(outcome)
    return prepared


@contextmanager
def using(prepared: Prepared) -> Iterator[None]:
    """Make ``prepared`` the results that ``_generate``/``_agenerate`` take while the batch runs."""
    token = _PREPARED.set(prepared)
    try:
        yield
    finally:
        _PREPARED.reset(token)


def take_prepared(request: Request) -> Outcome | None:
    """The prepared outcome of ``request`` (each one taken once), or ``None`` to decode it now."""
    prepared = _PREPARED.get()
    rows = prepared.get(key(request)) if prepared else None
    try:
        return rows.popleft() if rows else None
    except IndexError:  # another thread took the last one
        return None


def key(request: Request) -> str:
    """What identifies a request's answer: model, prompt and options."""
    model = request.model if isinstance(request.model, str) else id(request.model)
    return repr((model, sorted(request.load_kwargs.items()), request.prompt, sorted(request.options.items())))


def generate_rows(requests: Sequence[Request], max_rows: int) -> list[Outcome]:
    """Run every request, in batches of rows sharing their model and options (blocking)."""
    results: list[Outcome | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        model = request.model if isinstance(request.model, str) else id(request.model)
        groups.setdefault(repr((model, sorted(request.options.items()))), []).append(i)
    for rows in groups.values():
        first = requests[rows[0]]
        try:
            engine = first.engine()
        except Exception as error:  # noqa: BLE001 - every row of the group fails with it
            for i in rows:
                results[i] = error
            continue
        for start in range(0, len(rows), max_rows):
            part = rows[start : start + max_rows]
            for i, outcome in zip(
                part, _generate_part(engine, [requests[i] for i in part], first.options), strict=True
            ):
                results[i] = outcome
    return [outcome if outcome is not None else GuideError("the row was not run") for outcome in results]


def _generate_part(engine: GuideEngine, part: list[Request], options: dict[str, Any]) -> list[Outcome]:
    if len(part) == 1:
        return [_one(engine, part[0])]
    try:
        return list(engine.generate_batch([r.prompt for r in part], **options))
    except GuideError:
        # A bad prompt (tags, length) fails the whole batch before decoding starts;
        # one by one, each row gets its own answer or its own error.
        return [_one(engine, r) for r in part]
    except Exception as error:  # noqa: BLE001
        return [error] * len(part)


def _one(engine: GuideEngine, request: Request) -> Outcome:
    try:
        return engine.generate(request.prompt, **request.options)
    except Exception as error:  # noqa: BLE001
        return error


def _messages(item: Any) -> list[BaseMessage]:
    """An input as LangChain's chat models read it: a string, a prompt value or a list of messages."""
    if isinstance(item, PromptValue):
        return item.to_messages()
    if isinstance(item, str):
        return [HumanMessage(content=item)]
    return convert_to_messages(item)
