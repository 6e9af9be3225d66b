"""``batch``/``abatch`` as real batches: one left-padded ``generate_batch`` per group of inputs.

LangChain's default ``batch`` runs ``invoke`` per input on a thread pool; for a local model that
means N separate forward passes fighting over the same cores. Here every input still gets its
own chat-model run (its callbacks, tags, run id, ``on_llm_end`` or ``on_llm_error``), but the
decoding is batched: rows that share their options go through ``engine.generate_batch`` together,
at most ``max_concurrency`` rows at a time. Inputs whose prompt is bad fail alone, as they would
one by one.

:func:`plan_batch` returns ``None`` when the call needs what only the per-input path gives — a
cache lookup, a rate limiter, token streaming to a callback handler (``streaming=True``,
``astream_events``), or an input that does not convert — and ChatGuide then defers to
LangChain's default implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.utils.utils import LC_ID_PREFIX

from guide_engine import GenerationResult, GuideEngine, GuideError

from .callbacks import INFLUENCE_EVENT, RunEvents
from .messages import to_ai_message
from .request import Request, build_request

if TYPE_CHECKING:
    from .chat_model import ChatGuide

__all__ = ["BatchPlan", "abatch", "batch", "plan_batch"]


@dataclass
class BatchPlan:
    """The inputs of a batch, converted, with the options shared by every row."""

    messages: list[list[BaseMessage]]
    configs: list[RunnableConfig]
    stop: list[str] | None
    kwargs: dict[str, Any]


def plan_batch(
    llm: ChatGuide, inputs: Sequence[Any], configs: list[RunnableConfig], kwargs: dict[str, Any], *, async_api: bool
) -> BatchPlan | None:
    """Decide whether ``inputs`` can be one engine batch; ``None`` sends them down the default path."""
    if len(inputs) < 2 or llm.rate_limiter is not None:
        return None
    if not (llm.cache is False or (llm.cache is None and get_llm_cache() is None)):
        return None  # a cache is consulted per input
    kwargs = dict(kwargs)
    stop = kwargs.pop("stop", None)
    try:
        messages = [llm._convert_input(item).to_messages() for item in inputs]
    except Exception:  # the default path raises it for the right input, honouring return_exceptions
        return None
    for config in configs:
        manager = CallbackManager.configure(config.get("callbacks"), llm.callbacks, llm.verbose)
        if llm._should_stream(async_api=async_api, run_manager=manager, **kwargs):  # type: ignore[arg-type]
            return None
        protocol = getattr(llm, "_should_use_protocol_streaming", None)  # langchain-core >= 1.8
        if protocol is not None and protocol(async_api=async_api, run_manager=manager, **kwargs):
            return None
    return BatchPlan(messages=messages, configs=configs, stop=stop, kwargs=kwargs)


def generate_rows(requests: Sequence[Request | BaseException], max_rows: int) -> list[GenerationResult | BaseException]:
    """Run every request that was built, in batches of rows sharing their options (blocking)."""
    results: list[GenerationResult | BaseException | None] = list(
        r if isinstance(r, BaseException) else None for r in requests
    )
    groups: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        if isinstance(request, Request):
            groups.setdefault(repr((request.model, sorted(request.options.items()))), []).append(i)
    for rows in groups.values():
        first = requests[rows[0]]
        assert isinstance(first, Request)
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
            ):  # type: ignore[misc]
                results[i] = outcome
    return results  # type: ignore[return-value]


def _generate_part(
    engine: GuideEngine, part: list[Request], options: dict[str, Any]
) -> list[GenerationResult | BaseException]:
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


def _one(engine: GuideEngine, request: Request) -> GenerationResult | BaseException:
    try:
        return engine.generate(request.prompt, **request.options)
    except Exception as error:  # noqa: BLE001
        return error


def _ai_message(llm: ChatGuide, result: GenerationResult, request: Request, run_id: Any) -> AIMessage:
    message = to_ai_message(result, request.model_name)
    if llm.output_version == "v1":
        message = message.model_copy(
            update={
                "content": message.content_blocks,
                "response_metadata": {**message.response_metadata, "output_version": "v1"},
            }
        )
    message.id = f"{LC_ID_PREFIX}-{run_id}-0"
    return message


def _max_rows(plan: BatchPlan) -> int:
    return plan.configs[0].get("max_concurrency") or len(plan.messages)


def _start_settings(llm: ChatGuide, plan: BatchPlan) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    params = llm._get_invocation_params(stop=plan.stop, **plan.kwargs)
    ls_params = llm._get_ls_params_with_defaults(stop=plan.stop, **plan.kwargs)
    return dumpd(llm), params, dict(ls_params)


def _requests(llm: ChatGuide, plan: BatchPlan, run_managers: Sequence[Any]) -> list[Request | BaseException]:
    requests: list[Request | BaseException] = []
    for messages, run_manager in zip(plan.messages, run_managers, strict=True):
        try:  # measure a row only when its run has a handler to receive the result
            requests.append(build_request(llm, messages, plan.stop, plan.kwargs, measure=bool(run_manager.handlers)))
        except Exception as error:  # noqa: BLE001 - this row fails alone
            requests.append(error)
    return requests


def _outputs(outcomes: list[Any], return_exceptions: bool) -> list[Any]:
    if not return_exceptions:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return outcomes


def batch(llm: ChatGuide, plan: BatchPlan, return_exceptions: bool) -> list[Any]:
    """Run a planned batch: one run per input for the callbacks, one engine batch for the work."""
    serialized, params, ls_params = _start_settings(llm, plan)
    run_managers = []
    for messages, config in zip(plan.messages, plan.configs, strict=True):
        manager = CallbackManager.configure(
            config.get("callbacks"),
            llm.callbacks,
            llm.verbose,
            config.get("tags"),
            llm.tags,
            {**(config.get("metadata") or {}), **ls_params},
            llm.metadata,
        )
        (run_manager,) = manager.on_chat_model_start(
            serialized,
            [messages],
            invocation_params=params,
            options={"stop": plan.stop},
            name=config.get("run_name"),
            run_id=config.get("run_id"),
            batch_size=len(plan.messages),
        )
        run_managers.append(run_manager)
    requests = _requests(llm, plan, run_managers)
    try:
        results = generate_rows(requests, _max_rows(plan))
    except BaseException as error:  # interrupted: close every run
        for run_manager in run_managers:
            run_manager.on_llm_error(error)
        raise
    outcomes: list[Any] = []
    for request, result, run_manager in zip(requests, results, run_managers, strict=True):
        if isinstance(result, BaseException):
            run_manager.on_llm_error(result)
            outcomes.append(result)
            continue
        assert isinstance(request, Request)
        if result.influence is not None:
            RunEvents.of_run(run_manager).emit(INFLUENCE_EVENT, result.influence.to_dict())
        message = _ai_message(llm, result, request, run_manager.run_id)
        run_manager.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))
        outcomes.append(message)
    return _outputs(outcomes, return_exceptions)


async def abatch(llm: ChatGuide, plan: BatchPlan, return_exceptions: bool) -> list[Any]:
    """Async :func:`batch`: the engine batch runs on a worker thread, the loop stays free."""
    serialized, params, ls_params = _start_settings(llm, plan)
    run_managers = []
    for messages, config in zip(plan.messages, plan.configs, strict=True):
        manager = AsyncCallbackManager.configure(
            config.get("callbacks"),
            llm.callbacks,
            llm.verbose,
            config.get("tags"),
            llm.tags,
            {**(config.get("metadata") or {}), **ls_params},
            llm.metadata,
        )
        (run_manager,) = await manager.on_chat_model_start(
            serialized,
            [messages],
            invocation_params=params,
            options={"stop": plan.stop},
            name=config.get("run_name"),
            run_id=config.get("run_id"),
            batch_size=len(plan.messages),
        )
        run_managers.append(run_manager)
    requests = _requests(llm, plan, run_managers)
    try:
        results = await asyncio.to_thread(generate_rows, requests, _max_rows(plan))
    except BaseException as error:
        for run_manager in run_managers:
            await run_manager.on_llm_error(error)
        raise
    outcomes: list[Any] = []
    for request, result, run_manager in zip(requests, results, run_managers, strict=True):
        if isinstance(result, BaseException):
            await run_manager.on_llm_error(result)
            outcomes.append(result)
            continue
        assert isinstance(request, Request)
        if result.influence is not None:
            await RunEvents.of_run(run_manager).aemit(INFLUENCE_EVENT, result.influence.to_dict())
        message = _ai_message(llm, result, request, run_manager.run_id)
        await run_manager.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))
        outcomes.append(message)
    return _outputs(outcomes, return_exceptions)
