"""``ChatGuide``: a local transformers model behind GUIDE, as a LangChain chat model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, field_validator

from guide_engine import GenerationResult, GuideEngine

from . import batching
from .callbacks import INFLUENCE_EVENT, RunEvents
from .messages import final_chunk, to_ai_message
from .request import ENGINE_EXTRAS, PRIVATE_KEYS, Request, build_request, model_display_name
from .threads import astream_steps

try:  # time-ordered run ids, as LangChain's own (langchain-core >= 1.1)
    from langchain_core.utils.uuid import uuid7 as _new_run_id
except ImportError:  # pragma: no cover
    _new_run_id = uuid.uuid4

__all__ = ["ChatGuide"]

_EVENTS = PRIVATE_KEYS[0]


class ChatGuide(BaseChatModel):
    """A chat model whose prompts can emphasize text with GUIDE tags and measure its Influence.

    Tags written anywhere in the conversation (``<!-> … <-!>``, ``<!!-> … <-!!>``,
    ``<!!!-> … <-!!!>``, ``<?-> … <-?>``) bias the model's attention toward that text; the text
    the model reads is the prompt without its tags. A ``<?->`` span is measured: its Influence
    reaches callback handlers as the custom event ``"guide_influence"``
    (see :class:`~guide_integrations.langchain.InfluenceCallbackHandler`).

    Engines are shared: every ``ChatGuide`` on the same model and load options uses one loaded
    model, loaded on the first call. Tool calling and structured output are not supported.

    Example:
        >>> llm = ChatGuide(model="default", delta_mid=2.0, max_tokens=120, temperature=0)
        >>> llm.invoke("<!!-> Answer in French. <-!!> What is the capital of Italy?").content
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model: str | GuideEngine = Field(
        default="default",
        description="'default' (the embedded SmolLM2-135M-Instruct), a hub id in the local cache, a model "
        "folder, a path to a .gguf file, or a loaded GuideEngine.",
    )
    gguf_file: str | None = Field(
        default=None, description="GGUF file name inside the `model` folder or hub repository."
    )
    load_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to GuideEngine.from_pretrained when the model is loaded: dtype, device_map, ...",
    )
    temperature: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="Sampling temperature; 0 is greedy."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate; None: the engine's default (256)."
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] | None = Field(
        default=None, description="Stop strings; the text is cut before the first one. A call's `stop` replaces them."
    )
    streaming: bool = Field(default=False, description="Stream tokens to callbacks even from invoke().")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=f"Other engine options for every call: {', '.join(ENGINE_EXTRAS)}."
    )
    delta_mid: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Δ of level-2 emphasis (level 1 gets half, level 3 double); negative de-emphasizes. "
        "None: the engine's (1.0).",
    )
    layers: Literal["all"] | list[int] | None = Field(
        default=None, description="Decoder layers that get the bias: 'all' or indices. None: the engine's ('all')."
    )
    metric: Literal["influence", "attention_rollout"] | None = Field(
        default="influence",
        description="How a <?-> span is measured; None turns measuring off. "
        "Prompts without a <?-> span are not measured.",
    )
    delta_influence: float = Field(
        default=0.0, allow_inf_nan=False, description="Δ applied to <?-> spans while measuring."
    )
    escape_tool_messages: bool = Field(
        default=True,
        description="Escape tags in ToolMessage content (tool output is untrusted); "
        "False lets tool output create spans.",
    )

    @field_validator("model_kwargs")
    @classmethod
    def _known_engine_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ENGINE_EXTRAS))
        if unknown:
            raise ValueError(
                f"model_kwargs has unknown option(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(ENGINE_EXTRAS)} (the other options are fields of ChatGuide)"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not s for s in value):
            raise ValueError(f"stop strings must be non-empty, got {value!r}")
        return value

    # ------------------------------------------------------------------ LangChain's descriptors

    @property
    def _llm_type(self) -> str:
        return "guide-chat"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """ChatGuide can be saved with ``dumpd`` and restored with ``load`` (when ``model`` is a string)."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """The import path of this class, for ``langchain_core.load``."""
        return ["guide_integrations", "langchain"]

    def _resolve_model_profile(self) -> Any:
        # What ChatGuide offers whatever the model: text in, text out, no tools.
        return {
            "open_weights": True,
            "text_inputs": True,
            "text_outputs": True,
            "image_inputs": False,
            "image_url_inputs": False,
            "pdf_inputs": False,
            "audio_inputs": False,
            "video_inputs": False,
            "tool_calling": False,
            "tool_choice": False,
        }

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": model_display_name(self.model),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "delta_mid": self.delta_mid,
            "layers": self.layers,
            "metric": self.metric,
            "delta_influence": self.delta_influence,
            **self.model_kwargs,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model", self.model)
        params = LangSmithParams(
            ls_provider="guide",
            ls_model_name=model if isinstance(model, str) else model_display_name(model),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop if stop is not None else self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in super()._get_invocation_params(stop=stop, **kwargs).items() if k not in PRIVATE_KEYS}

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        return super()._get_llm_string(stop=stop, **{k: v for k, v in kwargs.items() if k not in PRIVATE_KEYS})

    # ------------------------------------------------------------------------- generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = _events(kwargs, run_manager)
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        result = request.engine().generate(request.prompt, **request.options)
        if events is not None and result.influence is not None:
            events.emit(INFLUENCE_EVENT, result.influence.to_dict())
        return _chat_result(result, request)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = _events(kwargs, run_manager)
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        result: GenerationResult | None = None
        async for item in astream_steps(lambda: _open_stream(request)):
            if isinstance(item, GenerationResult):
                result = item
        assert result is not None  # astream_steps always ends with the result
        if events is not None and result.influence is not None:
            await events.aemit(INFLUENCE_EVENT, result.influence.to_dict())
        return _chat_result(result, request)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        events = _events(kwargs, run_manager)
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        stream = _open_stream(request)
        try:
            for piece in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            stream.close()  # a consumer that stops early stops the model at once
        assert stream.result is not None
        if events is not None and stream.result.influence is not None:
            events.emit(INFLUENCE_EVENT, stream.result.influence.to_dict())
        yield ChatGenerationChunk(message=final_chunk(stream.result, request.model_name))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        events = _events(kwargs, run_manager)
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        async for item in astream_steps(lambda: _open_stream(request)):
            if isinstance(item, GenerationResult):
                if events is not None and item.influence is not None:
                    await events.aemit(INFLUENCE_EVENT, item.influence.to_dict())
                yield ChatGenerationChunk(message=final_chunk(item, request.model_name))
                return
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
            if run_manager is not None:
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    # ------------------------------------- getting the run's callbacks to `_stream` and `_generate`

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the answer; a measured span's event goes to the stream's own run."""
        config, kwargs = self._with_run_events(config, kwargs, async_api=False)
        yield from super().stream(input, config, stop=stop, **kwargs)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream the answer without blocking the event loop; see :meth:`stream`."""
        config, kwargs = self._with_run_events(config, kwargs, async_api=True)
        async for chunk in super().astream(input, config, stop=stop, **kwargs):
            yield chunk

    def _with_run_events(
        self, config: RunnableConfig | None, kwargs: dict[str, Any], *, async_api: bool
    ) -> tuple[RunnableConfig | None, dict[str, Any]]:
        # `BaseChatModel.stream` calls `_stream` without its run manager. Choosing the run id here
        # lets `_stream` address the run's handlers all the same.
        if not self._should_stream(async_api=async_api, **{**kwargs, "stream": True}):
            return config, kwargs
        config = ensure_config(config)
        run_id = config.get("run_id") or _new_run_id()
        config = {**config, "run_id": run_id}
        return config, {**kwargs, _EVENTS: RunEvents.for_new_run(self, config, run_id)}

    def _generate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # `invoke` may stream through `_stream` (streaming=True, a streaming handler): hand it the run.
        if run_manager is not None:
            kwargs.setdefault(_EVENTS, RunEvents.of_run(run_manager))
        return super()._generate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager is not None:
            kwargs.setdefault(_EVENTS, RunEvents.of_run(run_manager))
        return await super()._agenerate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)

    # ------------------------------------------------------------------------------ batches

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Answer several inputs with one batched decoding on the engine (see ``batching``)."""
        plan = batching.plan_batch(self, inputs, get_config_list(config, len(inputs)), kwargs, async_api=False)
        if plan is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        return batching.batch(self, plan, return_exceptions)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`; the engine batch runs on a worker thread."""
        plan = batching.plan_batch(self, inputs, get_config_list(config, len(inputs)), kwargs, async_api=True)
        if plan is None:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        return await batching.abatch(self, plan, return_exceptions)


def _events(kwargs: dict[str, Any], run_manager: Any) -> RunEvents | None:
    """The run's events: handed over by ChatGuide, or taken from LangChain's run manager."""
    events = kwargs.pop(_EVENTS, None)
    if run_manager is not None:
        return RunEvents.of_run(run_manager)
    return events


def _listening(events: RunEvents | None) -> bool:
    """Whether a measurement would reach anyone: otherwise its extra forward pass is skipped."""
    return events is not None and bool(events.handlers)


def _open_stream(request: Request) -> Any:
    return request.engine().stream(request.prompt, **request.options)


def _chat_result(result: GenerationResult, request: Request) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=to_ai_message(result, request.model_name))])
