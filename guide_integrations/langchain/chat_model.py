"""``ChatGuide``: a local transformers model behind GUIDE, as a LangChain chat model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, field_validator

from guide_engine import GenerationResult, GenerationStream, GuideEngine, GuideError

from ..core import MetricName, astream_pieces, model_display_name
from . import batching
from .callbacks import INFLUENCE_EVENT
from .messages import final_chunk, to_ai_message
from .request import ENGINE_EXTRAS, Request, build_request
from .runs import RunAwareChatModel, RunEvents, take_run_events

__all__ = ["ChatGuide"]


class ChatGuide(RunAwareChatModel):
    """A chat model whose prompts can emphasize text with GUIDE tags and measure its Influence.

    Tags written anywhere in the conversation (``<!-> … <-!>``, ``<!!-> … <-!!>``,
    ``<!!!-> … <-!!!>``, ``<?-> … <-?>``) bias the model's attention toward that text; the text
    the model reads is the prompt without its tags. A ``<?->`` span is measured: its Influence
    reaches callback handlers as the custom event ``"guide_influence"``
    (see :class:`~guide_integrations.langchain.InfluenceCallbackHandler`).

    Engines are shared: every ``ChatGuide`` on the same model and load options uses one loaded
    model, loaded on the first call. Tool calling and structured output are not supported.

    The shape of LangChain's partner chat models: ``_generate``, ``_agenerate``, ``_stream`` and
    ``_astream`` do the work; ``batch``/``abatch`` add one engine batch in front of LangChain's own
    (``batching``); the base class :class:`~guide_integrations.langchain.runs.RunAwareChatModel`
    lets ``_stream`` reach its run, which LangChain does not hand it (``runs``).

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
    metric: MetricName | None = Field(
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

    # ------------------------------------------------------------------------- generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = RunEvents.of_run(run_manager) if run_manager is not None else None
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        result = batching.take_prepared(request)  # this input's row of an engine batch, if any
        if result is None:
            result = request.engine().generate(request.prompt, **request.options)
        if isinstance(result, BaseException):
            raise result
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
        events = RunEvents.of_run(run_manager) if run_manager is not None else None
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        result = batching.take_prepared(request)
        if result is None:
            stream = await asyncio.to_thread(_open_stream, request)
            async for _ in astream_pieces(stream):  # step by step: cancelling stops decoding
                pass
            result = _finished(stream)
        if isinstance(result, BaseException):
            raise result
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
        events = RunEvents.of_run(run_manager) if run_manager is not None else take_run_events()
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
        result = _finished(stream)
        if events is not None and result.influence is not None:
            events.emit(INFLUENCE_EVENT, result.influence.to_dict())
        yield ChatGenerationChunk(message=final_chunk(result, request.model_name))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        events = RunEvents.of_run(run_manager) if run_manager is not None else take_run_events()
        request = build_request(self, messages, stop, kwargs, measure=_listening(events))
        stream = await asyncio.to_thread(_open_stream, request)
        pieces = astream_pieces(stream)
        try:
            async for piece in pieces:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            await pieces.aclose()  # closes the stream, after the step in flight if there is one
        result = _finished(stream)
        if events is not None and result.influence is not None:
            await events.aemit(INFLUENCE_EVENT, result.influence.to_dict())
        yield ChatGenerationChunk(message=final_chunk(result, request.model_name))

    # ------------------------------------------------------------------------------ batches

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``batch``, with the inputs decoded as one engine batch first (see ``batching``)."""
        with batching.using(batching.prepare(self, inputs, config, kwargs)):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`; the engine batch runs on a worker thread."""
        prepared = await asyncio.to_thread(batching.prepare, self, inputs, config, kwargs)
        with batching.using(prepared):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)


def _listening(events: RunEvents | None) -> bool:
    """Whether a measurement would reach anyone: otherwise its extra forward pass is skipped."""
    return events is not None and bool(events.handlers)


def _open_stream(request: Request) -> GenerationStream:
    return request.engine().stream(request.prompt, **request.options)


def _finished(stream: GenerationStream) -> GenerationResult:
    if stream.result is None:  # the engine sets it when the stream ends
        raise GuideError("the generation stream ended without a result")
    return stream.result


def _chat_result(result: GenerationResult, request: Request) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=to_ai_message(result, request.model_name))])
