"""``ChatGuide``: a local transformers model behind GUIDE, as a LangChain chat model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManager, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableBinding, RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from guide_engine import GenerationStream, GuideEngine, GuideError, shared_engine, strip_tags
from guide_engine.options import Metric

from ..core import (
    SettingsError,
    astream_pieces,
    check_engine_setting,
    check_message_tags,
    checked_field,
    model_display_name,
    stream_result,
)
from . import batching
from .events import INFLUENCE_EVENT
from .messages import input_messages, to_engine_prompt
from .options import (
    ENGINE_EXTRAS,
    FIELD_OPTIONS,
    OTHER_NAMES,
    OVERRIDABLE_FIELDS,
    PER_CALL_OPTIONS,
    UNESCAPED_TEXT_HINT,
    EngineCall,
    check_call_options,
)
from .outcomes import agenerate_outcome, generate_outcome, result_or_raise, runs_again
from .outputs import chat_result, closing_chunks, text_chunk, usage_chunk
from .runs import RunAwareChatModel, RunEvents, take_run_events
from .structured import ToolsAndSchemas
from .tools import ToolLike, format_tools

__all__ = ["ChatGuide", "GuideBinding"]


class ChatGuide(ToolsAndSchemas, RunAwareChatModel):
    """A chat model whose prompts can emphasize text with GUIDE tags and measure its Influence.

    Tags written anywhere in the conversation (``<!-> … <-!>``, ``<!!-> … <-!!>``,
    ``<!!!-> … <-!!!>``, ``<?-> … <-?>``) bias the model's attention toward that text; the text
    the model reads is the prompt without its tags. A ``<?->`` span is measured: its Influence
    reaches callback handlers as the custom event ``"guide_influence"``
    (see :class:`~guide_integrations.langchain.InfluenceCallbackHandler`).

    Engines are shared: every ``ChatGuide`` on the same model and load options uses one loaded
    model, loaded when the first of them is constructed.

    Tools (:meth:`bind_tools`) and structured output (:meth:`with_structured_output`,
    ``bind(response_format=...)``) are enforced by the engine's grammar: every tool call and every
    structured answer parses and validates, whatever the model's size (whether the model picks
    the *right* tool and arguments is up to the model). Token counts (:meth:`get_token_ids`,
    :meth:`get_num_tokens_from_messages`) use the model's own tokenizer and chat template.

    The model's own earlier answers (``AIMessage``) and tool results are never parsed for tags;
    to keep end-user input and documents from creating spans, build prompts with
    :class:`~guide_integrations.langchain.GuideChatPromptTemplate`.

    The shape of LangChain's partner chat models (langchain-ollama's ``ChatOllama``): the class
    builds its own engine call (``_engine_call``, from the fields, the call's keywords and the
    messages); ``_generate``, ``_agenerate``, ``_stream`` and ``_astream`` do the work;
    ``batch``/``abatch`` add one engine batch in front of LangChain's own (``batching``); the base
    class :class:`~guide_integrations.langchain.runs.RunAwareChatModel` lets ``_stream`` reach its
    run, which LangChain does not hand it (``runs``).

    Example:
        >>> llm = ChatGuide(model="default", delta_mid=1.0, max_tokens=120, temperature=0)
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
    temperature: float = Field(default=0.0, description="Sampling temperature; 0 is greedy.")
    max_tokens: int | None = Field(
        default=None, description="Most tokens to generate; None: the engine's default (256)."
    )
    top_p: float = Field(default=1.0, description="Nucleus sampling mass.")
    stop: list[str] | None = Field(
        default=None, description="Stop strings; the text is cut before the first one. A call's `stop` replaces them."
    )
    streaming: bool = Field(default=False, description="Stream tokens to callbacks even from invoke().")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=f"Other engine options for every call: {', '.join(ENGINE_EXTRAS)}."
    )
    delta_mid: float | None = Field(
        default=None,
        description="Δ of level-2 emphasis (level 1 gets half, level 3 double); negative de-emphasizes. "
        "None: the engine's (1.0).",
    )
    layers: Literal["all"] | list[int] | None = Field(
        default=None, description="Decoder layers that get the bias: 'all' or indices. None: the engine's ('all')."
    )
    metric: Metric | None = Field(
        default="influence",
        description="How a <?-> span is measured; None turns measuring off. "
        "Prompts without a <?-> span are not measured.",
    )
    delta_influence: float = Field(default=0.0, description="Δ applied to <?-> spans while measuring.")
    escape_tool_messages: bool = Field(
        default=True,
        description="Escape tags in ToolMessage content (tool output is untrusted); "
        "False lets tool output create spans.",
    )
    repetition_penalty: float | None = Field(
        default=None,
        description="transformers' repetition penalty over prompt and answer (> 1 discourages loops); "
        "None: the engine's (1.0, off).",
    )
    timeout: float | None = Field(
        default=None,
        description="Wall-clock limit in seconds for one generation (prefill and decoding); past it the call "
        "raises GenerationTimeoutError, whose .partial holds the answer so far. None: no limit.",
    )
    max_retries: int = Field(
        default=0,
        ge=0,
        description="How many more times a non-streaming call that hit `timeout` is run (a local model has no "
        "other transient failure to retry; a stream that has started is never retried). 0: none.",
    )

    _engine: GuideEngine | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        """Check the settings and load (or reuse) the model.

        Raises:
            SettingsError: a bad setting, in the engine's words (``delta_mid must be a finite
                number, got 'high'``); also pydantic's ``ValidationError`` and a ``GuideValueError``.
        """
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise SettingsError.of(type(self), error, data, FIELD_OPTIONS) from None

    @model_validator(mode="before")
    @classmethod
    def _refuse_other_names(cls, values: Any) -> Any:
        for name, ours in OTHER_NAMES.items():
            if isinstance(values, Mapping) and name in values:
                raise ValueError(f"ChatGuide takes {ours!r} (LangChain's name), not {name!r}")
        return values

    @model_validator(mode="after")
    def _load_engine(self) -> ChatGuide:
        # Loaded (or found among the shared engines) now, so a bad model fails at construction.
        load_kwargs = dict(self.load_kwargs)
        if self.gguf_file is not None:
            load_kwargs["gguf_file"] = self.gguf_file
        self._engine = shared_engine(self.model, **load_kwargs)
        return self

    @property
    def engine(self) -> GuideEngine:
        """The loaded engine of ``model`` (shared with every wrapper on the same model)."""
        if self._engine is None:  # pragma: no cover - set by the validator
            raise GuideError("ChatGuide's engine was not loaded")
        return self._engine

    @field_validator(*FIELD_OPTIONS, mode="wrap")
    @classmethod
    def _engine_check(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        # Fields declare types only; the bounds are the engine's, checked once (core.checked_field).
        name = str(info.field_name)
        return checked_field(FIELD_OPTIONS[name], value, handler, name)

    @field_validator("model_kwargs")
    @classmethod
    def _known_engine_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ENGINE_EXTRAS))
        if unknown:
            raise ValueError(
                f"model_kwargs has unknown option(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(ENGINE_EXTRAS)} (the other options are fields of ChatGuide)"
            )
        for name, option in value.items():
            check_engine_setting(name, option)
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
        # What ChatGuide offers whatever the model: text in, text out, tools and structured output by grammar.
        return {
            "open_weights": True,
            "text_inputs": True,
            "text_outputs": True,
            "image_inputs": False,
            "image_url_inputs": False,
            "pdf_inputs": False,
            "audio_inputs": False,
            "video_inputs": False,
            "tool_calling": True,
            "tool_choice": True,
            "structured_output": True,
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
            "repetition_penalty": self.repetition_penalty,
            "timeout": self.timeout,
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

    # ------------------------------------------------------------------------- one call

    def _engine_call(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
        *,
        measure: bool = True,
    ) -> EngineCall:
        """The engine call for ``messages``: the fields, overridden by the call's keywords, checked once.

        ``measure=False`` skips the Influence pass: no callback handler could receive it.

        Raises:
            GuideValueError: for a keyword ChatGuide does not know.
            MessageError: for a message that cannot be sent (see :func:`to_engine_prompt`).
            TagError: for malformed tags, naming the message and how to escape outside text.
        """
        check_call_options(kwargs)
        value = {name: kwargs.get(name, getattr(self, name)) for name in OVERRIDABLE_FIELDS}
        prompt = to_engine_prompt(messages, escape_tool_messages=self.escape_tool_messages)
        options: dict[str, Any] = {
            "stop": list(stop if stop is not None else self.stop or []),
            **self.model_kwargs,
            **{name: kwargs[name] for name in ENGINE_EXTRAS if name in kwargs},
            **{name: kwargs[name] for name in PER_CALL_OPTIONS if kwargs.get(name) is not None},
        }
        for name, engine_name in FIELD_OPTIONS.items():
            if name != "metric" and value[name] is not None:  # None: the engine's own default
                options[engine_name] = value[name]
        parsed = check_message_tags(prompt, UNESCAPED_TEXT_HINT)  # a tag error names its message
        if measure and value["metric"] is not None and any(s.kind == "influence" for p in parsed for s in p.spans):
            options["metric"] = value["metric"]
        load_kwargs = dict(self.load_kwargs)
        if "model" not in kwargs and self.gguf_file is not None:
            load_kwargs["gguf_file"] = self.gguf_file
        return EngineCall(model=value["model"], load_kwargs=load_kwargs, prompt=prompt, options=options)

    # ------------------------------------------------------------------------- generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = RunEvents.of_run(run_manager) if run_manager is not None else None
        call = self._engine_call(messages, stop, kwargs, measure=_listening(events))
        outcome = batching.take_prepared(call)  # this input's row of an engine batch, if any
        runs = 0 if outcome is None else 1
        while runs_again(outcome, runs, self.max_retries):
            outcome, runs = generate_outcome(call), runs + 1
        result = result_or_raise(outcome)
        if events is not None and result.influence is not None:
            events.emit(INFLUENCE_EVENT, result.influence.to_dict())
        return chat_result(result, call.model_name, may_call_tools=call.may_call_tools)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = RunEvents.of_run(run_manager) if run_manager is not None else None
        call = self._engine_call(messages, stop, kwargs, measure=_listening(events))
        outcome = batching.take_prepared(call)
        runs = 0 if outcome is None else 1
        while runs_again(outcome, runs, self.max_retries):
            outcome, runs = await agenerate_outcome(call), runs + 1
        result = result_or_raise(outcome)
        if events is not None and result.influence is not None:
            await events.aemit(INFLUENCE_EVENT, result.influence.to_dict())
        return chat_result(result, call.model_name, may_call_tools=call.may_call_tools)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        events = RunEvents.of_run(run_manager) if run_manager is not None else take_run_events()
        call = self._engine_call(messages, stop, kwargs, measure=_listening(events))
        stream = _open_stream(call)
        try:
            for piece in stream:  # never tool-call markup: the engine holds it back
                chunk = text_chunk(piece)
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            stream.close()  # a consumer that stops early stops the model at once
        result = stream_result(stream)
        yield from closing_chunks(result, may_call_tools=call.may_call_tools)
        if events is not None and result.influence is not None:
            events.emit(INFLUENCE_EVENT, result.influence.to_dict())
        yield usage_chunk(result, call.model_name)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        events = RunEvents.of_run(run_manager) if run_manager is not None else take_run_events()
        call = self._engine_call(messages, stop, kwargs, measure=_listening(events))
        stream = await asyncio.to_thread(_open_stream, call)
        pieces = astream_pieces(stream)
        try:
            async for piece in pieces:  # never tool-call markup: the engine holds it back
                chunk = text_chunk(piece)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            await pieces.aclose()  # closes the stream, after the step in flight if there is one
        result = stream_result(stream)
        for chunk in closing_chunks(result, may_call_tools=call.may_call_tools):
            yield chunk
        if events is not None and result.influence is not None:
            await events.aemit(INFLUENCE_EVENT, result.influence.to_dict())
        yield usage_chunk(result, call.model_name)

    # --------------------------------------------------------------- tools, structured output

    # BaseChatModel.bind returns LangChain's private _ChatModelBinding (a RunnableBinding typed for
    # stream_events v3); ours is a RunnableBinding too, with bind_tools/with_structured_output that keep options.
    def bind(self, **kwargs: Any) -> GuideBinding:  # type: ignore[override]
        """Bind call options (``max_tokens``, ``delta_mid``, ``tools`` ...) to every call.

        Returns a :class:`GuideBinding`, on which ``bind_tools`` and ``with_structured_output``
        keep the bound options (a plain ``RunnableBinding`` hands them to the model and drops them).
        """
        return GuideBinding(bound=self, kwargs=kwargs, config={})

    def with_config(self, config: RunnableConfig | None = None, **kwargs: Any) -> GuideBinding:
        """``Runnable.with_config``, as a :class:`GuideBinding`: options bound after it stay bound too."""
        return GuideBinding(bound=self, kwargs={}, config=cast("RunnableConfig", {**(config or {}), **kwargs}))

    # ----------------------------------------------------------------------- token counts

    def get_token_ids(self, text: str) -> list[int]:
        """The model tokenizer's ids for ``text`` as the model reads it: tags are not tokens.

        Raises:
            TagError: for malformed tags, as a call would.
        """
        return list(self.engine.tokenizer.encode(strip_tags(text), add_special_tokens=False))

    def get_num_tokens_from_messages(
        self,
        messages: list[BaseMessage],
        tools: Sequence[ToolLike] | None = None,
    ) -> int:
        """Prompt tokens of ``messages`` through the model's chat template (tags excluded), as a call counts them.

        With ``tools``, the tools' rendering counts too. Works with ``trim_messages(token_counter=llm)``.
        """
        if not messages:
            return 0
        prompt = to_engine_prompt(messages, escape_tool_messages=self.escape_tool_messages)
        return len(self.engine.encode(prompt, tools=format_tools(tools) if tools else None).input_ids)

    # ------------------------------------------------------------------------------ batches

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``batch``, with the inputs decoded as one engine batch first (see ``batching``).

        Nothing is decoded ahead when LangChain would not call ``_generate`` for every input: a
        cache (consulted per input), a rate limiter, streaming (``streaming=True`` or a streaming
        handler such as ``astream_events``'), a single input. An input whose conversion or tags
        fail is not decoded ahead either; its own run raises the error.
        """
        with batching.using(self._prepare_batch(inputs, config, kwargs)):
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
        prepared = await asyncio.to_thread(self._prepare_batch, inputs, config, kwargs)
        with batching.using(prepared):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _prepare_batch(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None,
        kwargs: Mapping[str, Any],
    ) -> batching.Prepared:
        """Decode, as engine batches, every input that LangChain will hand to ``_generate`` (blocking)."""
        configs = get_config_list(config, len(inputs))
        if len(inputs) < 2 or not self._generates_every_input():
            return {}
        options = dict(kwargs)
        stop = options.pop("stop", None)
        calls: list[EngineCall] = []
        for item, item_config in zip(inputs, configs, strict=True):
            handlers = CallbackManager.configure(item_config.get("callbacks"), self.callbacks, self.verbose).handlers
            if any(hasattr(handler, "tap_output_iter") for handler in handlers):
                return {}  # a streaming handler (astream_events): LangChain calls `_stream`
            try:  # measure a row only when its run has a handler to receive the result
                calls.append(self._engine_call(input_messages(item), stop, options, measure=bool(handlers)))
            except Exception:  # noqa: BLE001 - this input's own run raises it
                continue
        return batching.prepare(calls, max_rows=configs[0].get("max_concurrency") or len(inputs))

    def _generates_every_input(self) -> bool:
        """Whether LangChain's ``batch`` calls ``_generate`` for each input: no rate limiter, streaming or cache."""
        if self.rate_limiter is not None or self.streaming:
            return False
        return self.cache is False or (self.cache is None and get_llm_cache() is None)


def _listening(events: RunEvents | None) -> bool:
    """Whether a measurement would reach anyone: otherwise its extra forward pass is skipped."""
    return events is not None and bool(events.handlers)


def _open_stream(call: EngineCall) -> GenerationStream:
    return call.engine().stream(call.prompt, **call.options)


class GuideBinding(ToolsAndSchemas, RunnableBinding[LanguageModelInput, Any]):
    """``ChatGuide`` with bound call options, as ``ChatGuide.bind`` returns it.

    LangChain's ``RunnableBinding`` hands ``bind_tools`` and ``with_structured_output`` to the
    model, which drops the bound options; here they stay bound (:class:`ToolsAndSchemas`), so
    ``llm.bind(max_tokens=400).with_structured_output(Person)`` decodes with 400 tokens.
    """

    @classmethod
    def lc_id(cls) -> list[str]:
        """Serialized as LangChain's ``RunnableBinding`` (as its own chat-model binding is), so ``load`` reads it."""
        return [*cls.get_lc_namespace(), "RunnableBinding"]
