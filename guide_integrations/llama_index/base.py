"""``GuideLLM``: a GUIDE engine as a LlamaIndex LLM, for query engines, chat engines and agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import aclosing, closing
from typing import Any, Literal
from uuid import uuid4

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    DocumentBlock,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    VideoBlock,
)
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts.base import BasePromptTemplate
from pydantic import ConfigDict, Field, PrivateAttr

from guide_engine import GenerationResult, GenerationStream, GuideEngine, GuideError, shared_engine
from guide_engine.errors import GuideValueError
from guide_engine.loading import DEFAULT_MODEL_NAMES

from ..core import (
    ENGINE_OPTIONS,
    MetricName,
    astream_pieces,
    has_influence_span,
    model_display_name,
    token_usage,
    unknown_options,
)
from .events import GUIDE_METADATA_KEY, InfluenceEvent, ResponseAnnotator
from .templates import escaped_template_args

__all__ = ["GuideLLM"]

dispatcher = get_dispatcher(__name__)

_ROLES = {MessageRole.DEVELOPER: "system", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}
_MEDIA_BLOCKS = (ImageBlock, AudioBlock, VideoBlock, DocumentBlock)


class GuideLLM(CustomLLM):
    """A local transformers model whose attention follows GUIDE tags, as a LlamaIndex LLM.

    Tags written in prompt templates (text QA, refine, summary, chat templates), in
    ``system_prompt`` and in prompts passed to ``complete``/``chat`` are applied. Everything a
    template is *formatted with* — retrieved node text, the user's query, earlier answers — is
    escaped first (``escape_template_variables``), so a document containing ``<!!!-> … <-!!!>``
    reaches the model as those literal characters and gets no Δ.

    Example:
        >>> from llama_index.core import Settings, VectorStoreIndex, PromptTemplate
        >>> Settings.llm = GuideLLM(model="default", delta_mid=2.0, max_new_tokens=128)
        >>> qa = PromptTemplate("Context:\\n{context_str}\\n<!!-> Answer only from the context. <-!!>\\n"
        ...                     "Question: {query_str}\\nAnswer: ")
        >>> index.as_query_engine(text_qa_template=qa).query("...")

    Responses carry what was applied: ``additional_kwargs`` has ``spans`` (one dict per
    :class:`~guide_engine.AppliedSpan`) and token counts; ``raw["guide"]`` adds the rendered
    prompt; ``raw["influence"]`` holds the Influence payload when it was measured. Query engine
    responses get the records of their LLM calls under ``response.metadata["guide"]``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str = Field(
        default="default",
        description="'default' (the embedded SmolLM2-135M-Instruct), a hub id in the local cache, "
        "a folder or a .gguf path.",
    )
    gguf_file: str | None = Field(default=None, description="GGUF file name inside `model` (a folder or hub id).")
    dtype: str | None = Field(default=None, description="torch dtype name for the weights, e.g. 'bfloat16'.")
    device_map: str | dict[str, Any] | None = Field(
        default=None, description="transformers device_map, e.g. 'auto' or 'cpu'."
    )
    delta_mid: float = Field(
        default=1.0,
        allow_inf_nan=False,
        description="Δ of emphasis level 2 (<!!->); level 1 gets half, level 3 double. Negative de-emphasizes.",
    )
    delta_influence: float = Field(
        default=0.0, allow_inf_nan=False, description="Δ applied to the <?-> influence span (0: measure only)."
    )
    layers: Literal["all"] | list[int] = Field(
        default="all", description="'all' or the decoder-layer indices that get the bias."
    )
    heads: list[int] | None = Field(default=None, description="Query-head indices that get the bias (None: all).")
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens to generate per call.")
    temperature: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int = Field(default=0, ge=0, description="Sample among the k likeliest tokens (0: no limit).")
    seed: int | None = Field(default=None, description="Random seed for sampling.")
    stop: list[str] | None = Field(default=None, description="Stop strings; the text is cut before them.")
    metric: MetricName | None = Field(
        default=None,
        description="Measure the <?-> span's influence on calls whose prompt has one, "
        "and dispatch it as an InfluenceEvent.",
    )
    escape_template_variables: bool = Field(
        default=True,
        description="Escape tags in every value formatted into a prompt template (retrieved text, query, "
        "earlier answers), so only the template's own tags create spans. Turn off only for trusted values.",
    )

    _engine: GuideEngine = PrivateAttr()

    def __init__(self, *, engine: GuideEngine | None = None, **data: Any) -> None:
        """Load (or reuse) the model.

        Args:
            engine: a ready :class:`~guide_engine.GuideEngine` to use instead of loading ``model``.
            **data: the fields above. The engine is :func:`guide_engine.shared_engine` of ``model``
                and the load options, so a ``ChatGuide`` or another ``GuideLLM`` on the same model
                shares it.
        """
        if engine is not None and not isinstance(engine, GuideEngine):
            raise GuideValueError(f"engine must be a GuideEngine, got {type(engine).__name__}")
        if engine is not None:
            data.setdefault("model", str(getattr(engine.model.config, "name_or_path", "") or "engine"))
        super().__init__(**data)
        load = {
            k: v
            for k, v in (("gguf_file", self.gguf_file), ("dtype", self.dtype), ("device_map", self.device_map))
            if v is not None
        }
        if engine is not None and load:
            raise GuideValueError(f"pass either engine= or the load options {sorted(load)}, not both")
        model = None if self.model in DEFAULT_MODEL_NAMES else self.model
        self._engine = engine if engine is not None else shared_engine(model, **load)
        ResponseAnnotator.install()

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "GuideLLM"

    @property
    def engine(self) -> GuideEngine:
        """The shared :class:`~guide_engine.GuideEngine` this LLM calls."""
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        """Context window and chat support of the loaded model; ``num_output`` is ``max_new_tokens``."""
        return LLMMetadata(
            context_window=self._engine.context_length or DEFAULT_CONTEXT_WINDOW,
            num_output=self.max_new_tokens,
            is_chat_model=self._has_chat_template,
            is_function_calling_model=False,
            model_name=model_display_name(self.model),
        )

    # ----------------------------------------------------------------- templates: escaping

    def _get_prompt(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        # predict / stream / apredict / astream format completion prompts here.
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super()._get_prompt(prompt, **prompt_args)

    def _get_messages(self, prompt: BasePromptTemplate, **prompt_args: Any) -> list[ChatMessage]:
        # ... and chat prompts here (GuideLLM is a chat model when the tokenizer has a chat template).
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super()._get_messages(prompt, **prompt_args)

    # Structured programs format the template themselves, so escape on the way in.
    def structured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """Structured predict, with the template's values escaped (see ``escape_template_variables``)."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super().structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astructured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """Async structured predict, with the template's values escaped."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return await super().astructured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    def stream_structured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """Streaming structured predict, with the template's values escaped."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super().stream_structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astream_structured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """Async streaming structured predict, with the template's values escaped."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return await super().astream_structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    def _template_inputs(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> tuple[BasePromptTemplate, dict[str, Any]]:
        if not self.escape_template_variables:
            return prompt, prompt_args
        return escaped_template_args(prompt, prompt_args, llm=self)

    # ------------------------------------------------------------------------ completion

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete a prompt (sent as a user message through the chat template, when there is one).

        Args:
            prompt: the prompt; its tags apply.
            formatted: ``True`` when ``prompt`` is already formatted (``completion_to_prompt`` and
                ``system_prompt`` are then not applied again).
            **kwargs: per-call generation options: ``max_new_tokens``, ``temperature``, ``top_p``,
                ``top_k``, ``seed``, ``stop``, ``delta_mid``, ``delta_influence``, ``layers``,
                ``heads``, ``metric``.
        """
        request = self._completion_prompt(prompt, formatted)
        result = self._engine.generate(request, **self._options(request, kwargs))
        return self._completion_response(result, result.text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, one response per text piece; the last carries spans and counts."""
        request = self._completion_prompt(prompt, formatted)
        stream = self._engine.stream(request, **self._options(request, kwargs))
        return self._stream_responses(stream, self._completion_chunk, active_span_id.get())

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` without blocking the event loop; cancelling it stops decoding."""
        request = self._completion_prompt(prompt, formatted)
        result = await self._agenerate(request, kwargs)
        return self._completion_response(result, result.text)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` without blocking the event loop; each step runs in a worker thread."""
        request = self._completion_prompt(prompt, formatted)
        stream = await asyncio.to_thread(self._engine.stream, request, **self._options(request, kwargs))
        return self._astream_responses(stream, self._completion_chunk, active_span_id.get())

    # ------------------------------------------------------------------------------ chat

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation, rendered by the model's chat template; tags apply in every message.

        Args:
            messages: the conversation (system, user and assistant turns).
            **kwargs: per-call generation options, as for :meth:`complete`.
        """
        request = self._chat_prompt(messages)
        result = self._engine.generate(request, **self._options(request, kwargs))
        return self._chat_response(result, result.text)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, one response per text piece; the last carries spans and counts."""
        request = self._chat_prompt(messages)
        stream = self._engine.stream(request, **self._options(request, kwargs))
        return self._stream_responses(stream, self._chat_chunk, active_span_id.get())

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` without blocking the event loop; cancelling it stops decoding."""
        request = self._chat_prompt(messages)
        result = await self._agenerate(request, kwargs)
        return self._chat_response(result, result.text)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` without blocking the event loop; each step runs in a worker thread."""
        request = self._chat_prompt(messages)
        stream = await asyncio.to_thread(self._engine.stream, request, **self._options(request, kwargs))
        return self._astream_responses(stream, self._chat_chunk, active_span_id.get())

    # ------------------------------------------------------------------------- internals

    @property
    def _has_chat_template(self) -> bool:
        return bool(getattr(self._engine.tokenizer, "chat_template", None))

    def _completion_prompt(self, prompt: str, formatted: bool) -> Any:
        if formatted:
            return prompt
        text = self.completion_to_prompt(prompt) if self.completion_to_prompt else prompt
        if not self.system_prompt:
            return text
        if self._has_chat_template:
            return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": text}]
        return f"{self.system_prompt}\n\n{text}"

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> Any:
        if not self._has_chat_template:
            return self.messages_to_prompt(messages)  # type: ignore[misc]  # LLM sets a default
        request = []
        for index, message in enumerate(messages):
            texts = []
            for block in message.blocks:
                if isinstance(block, TextBlock):
                    texts.append(block.text)
                elif isinstance(block, _MEDIA_BLOCKS):
                    raise GuideValueError(
                        f"message {index} has a {type(block).__name__}; GuideLLM takes text only (TextBlock)"
                    )
            role = _ROLES.get(message.role, getattr(message.role, "value", str(message.role)))
            request.append({"role": role, "content": "\n".join(texts)})
        return request

    def _options(self, request: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = unknown_options(kwargs, ENGINE_OPTIONS)
        if unknown:
            raise GuideValueError(f"unknown generation option(s) {unknown}; GuideLLM accepts {sorted(ENGINE_OPTIONS)}")
        # Every engine option is a field of the same name; the call's keywords win.
        options = {name: kwargs.get(name, getattr(self, name)) for name in ENGINE_OPTIONS}
        if options["metric"] is not None and not has_influence_span(request):
            options["metric"] = None  # nothing to measure
        return options

    async def _agenerate(self, request: Any, kwargs: dict[str, Any]) -> GenerationResult:
        stream = await asyncio.to_thread(self._engine.stream, request, **self._options(request, kwargs))
        async for _ in astream_pieces(stream):  # step by step: cancelling stops decoding
            pass
        return _finished(stream)

    def _stream_responses(
        self, stream: GenerationStream, chunk: Any, span_id: str | None
    ) -> Generator[Any, None, None]:
        text = ""
        with closing(_pieces(stream)) as pieces:  # a consumer that stops early stops decoding
            for piece, result in pieces:
                text += piece
                yield chunk(text, piece, result, span_id)

    async def _astream_responses(
        self, stream: GenerationStream, chunk: Any, span_id: str | None
    ) -> AsyncGenerator[Any, None]:
        text = ""
        async with aclosing(_apieces(stream)) as pieces:
            async for piece, result in pieces:
                text += piece
                yield chunk(text, piece, result, span_id)

    def _completion_chunk(
        self, text: str, piece: str, result: GenerationResult | None, span_id: str | None
    ) -> CompletionResponse:
        if result is None:
            return CompletionResponse(text=text, delta=piece)
        return self._completion_response(result, piece, span_id=span_id)

    def _chat_chunk(self, text: str, piece: str, result: GenerationResult | None, span_id: str | None) -> ChatResponse:
        if result is None:
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
        return self._chat_response(result, piece, span_id=span_id)

    def _extras(self, result: GenerationResult, span_id: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``additional_kwargs`` and ``raw`` of a finished call; dispatches its InfluenceEvent."""
        spans = [s.to_dict() for s in result.spans]
        usage = token_usage(result)
        record: dict[str, Any] = {
            "id": str(uuid4()),
            "model": self.metadata.model_name,
            "spans": spans,
            **usage,
            "finish_reason": result.finish_reason,
            "prompt_text": result.prompt_text,
        }
        raw: dict[str, Any] = {GUIDE_METADATA_KEY: record, "usage": usage, "influence": None}
        if result.influence is not None:
            raw["influence"] = result.influence.to_dict()
            event = InfluenceEvent(model=record["model"], text=result.text, influence=raw["influence"])
            if span_id is not None:  # a stream ends after its call's span
                event.span_id = span_id
            dispatcher.event(event)
        return {"spans": spans, **usage, "finish_reason": result.finish_reason}, raw

    def _completion_response(
        self, result: GenerationResult, delta: str, span_id: str | None = None
    ) -> CompletionResponse:
        extra, raw = self._extras(result, span_id)
        return CompletionResponse(text=result.text, delta=delta, additional_kwargs=extra, raw=raw)

    def _chat_response(self, result: GenerationResult, delta: str, span_id: str | None = None) -> ChatResponse:
        extra, raw = self._extras(result, span_id)
        message = ChatMessage(role=MessageRole.ASSISTANT, content=result.text)
        return ChatResponse(message=message, delta=delta, additional_kwargs=extra, raw=raw)


def _finished(stream: GenerationStream) -> GenerationResult:
    if stream.result is None:  # the engine sets it when the stream ends
        raise GuideError("the generation stream ended without a result")
    return stream.result


def _pieces(stream: GenerationStream) -> Generator[tuple[str, GenerationResult | None], None, None]:
    """``(piece, None)`` per text piece, the last one held back and paired with the result."""
    try:
        held = ""
        for piece in stream:
            if held:
                yield held, None
            held = piece
        yield held, _finished(stream)
    finally:
        stream.close()  # stops decoding when the consumer stops early


async def _apieces(stream: GenerationStream) -> AsyncGenerator[tuple[str, GenerationResult | None], None]:
    """:func:`_pieces` without blocking the event loop (:func:`guide_integrations.core.astream_pieces`)."""
    async with aclosing(astream_pieces(stream)) as pieces:
        held = ""
        async for piece in pieces:
            if held:
                yield held, None
            held = piece
    yield held, _finished(stream)
