"""``GuideLLM``: a GUIDE engine as a LlamaIndex LLM, for query engines, chat engines and agents."""

from __future__ import annotations

import asyncio
from contextlib import aclosing, closing
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, Optional, Union
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
from guide_engine.loading import DEFAULT_MODEL_NAMES, EMBEDDED_GGUF

from .events import GUIDE_METADATA_KEY, InfluenceEvent, ResponseAnnotator
from .templates import escaped_template_args

__all__ = ["GuideLLM"]

dispatcher = get_dispatcher(__name__)

_CALL_OPTIONS = frozenset(
    {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop",
     "delta_mid", "delta_influence", "layers", "heads", "metric"}
)
_ROLES = {MessageRole.DEVELOPER: "system", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}
_MEDIA_BLOCKS = (ImageBlock, AudioBlock, VideoBlock, DocumentBlock)
_DONE = object()


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
        description="'default' (the embedded SmolLM2-135M-Instruct), a hub id in the local cache, a folder or a .gguf path.",
    )
    gguf_file: Optional[str] = Field(default=None, description="GGUF file name inside `model` (a folder or hub id).")
    dtype: Optional[str] = Field(default=None, description="torch dtype name for the weights, e.g. 'bfloat16'.")
    device_map: Optional[Union[str, dict[str, Any]]] = Field(
        default=None, description="transformers device_map, e.g. 'auto' or 'cpu'."
    )
    delta_mid: float = Field(
        default=1.0, allow_inf_nan=False,
        description="Δ of emphasis level 2 (<!!->); level 1 gets half, level 3 double. Negative de-emphasizes.",
    )
    delta_influence: float = Field(
        default=0.0, allow_inf_nan=False, description="Δ applied to the <?-> influence span (0: measure only)."
    )
    layers: Union[Literal["all"], list[int]] = Field(
        default="all", description="'all' or the decoder-layer indices that get the bias."
    )
    heads: Optional[list[int]] = Field(default=None, description="Query-head indices that get the bias (None: all).")
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens to generate per call.")
    temperature: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int = Field(default=0, ge=0, description="Sample among the k likeliest tokens (0: no limit).")
    seed: Optional[int] = Field(default=None, description="Random seed for sampling.")
    stop: Optional[list[str]] = Field(default=None, description="Stop strings; the text is cut before them.")
    metric: Optional[Literal["influence", "attention_rollout"]] = Field(
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

    def __init__(self, *, engine: Optional[GuideEngine] = None, **data: Any) -> None:
        """Load (or reuse) the model.

        Args:
            engine: a ready :class:`~guide_engine.GuideEngine` to use instead of loading ``model``.
            **data: the fields above. The engine is :func:`guide_engine.shared_engine` of ``model``
                and the load options, so a ``ChatGuide`` or another ``GuideLLM`` on the same model
                shares it.
        """
        if engine is not None and not isinstance(engine, GuideEngine):
            raise GuideError(f"engine must be a GuideEngine, got {type(engine).__name__}")
        if engine is not None:
            data.setdefault("model", str(getattr(engine.model.config, "name_or_path", "") or "engine"))
        super().__init__(**data)
        load = {k: v for k, v in (("gguf_file", self.gguf_file), ("dtype", self.dtype),
                                  ("device_map", self.device_map)) if v is not None}
        if engine is not None and load:
            raise GuideError(f"pass either engine= or the load options {sorted(load)}, not both")
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
        name = EMBEDDED_GGUF.removesuffix(".gguf") if self.model in DEFAULT_MODEL_NAMES else self.model
        return LLMMetadata(
            context_window=self._engine.context_length or DEFAULT_CONTEXT_WINDOW,
            num_output=self.max_new_tokens,
            is_chat_model=self._has_chat_template,
            is_function_calling_model=False,
            model_name=name,
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
    def structured_predict(self, output_cls: Any, prompt: BasePromptTemplate,
                           llm_kwargs: Optional[dict[str, Any]] = None, **prompt_args: Any) -> Any:
        """Structured predict, with the template's values escaped (see ``escape_template_variables``)."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super().structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astructured_predict(self, output_cls: Any, prompt: BasePromptTemplate,
                                  llm_kwargs: Optional[dict[str, Any]] = None, **prompt_args: Any) -> Any:
        """Async structured predict, with the template's values escaped."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return await super().astructured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    def stream_structured_predict(self, output_cls: Any, prompt: BasePromptTemplate,
                                  llm_kwargs: Optional[dict[str, Any]] = None, **prompt_args: Any) -> Any:
        """Streaming structured predict, with the template's values escaped."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super().stream_structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astream_structured_predict(self, output_cls: Any, prompt: BasePromptTemplate,
                                         llm_kwargs: Optional[dict[str, Any]] = None, **prompt_args: Any) -> Any:
        """Async streaming structured predict, with the template's values escaped."""
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return await super().astream_structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    def _template_inputs(self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]) -> tuple[BasePromptTemplate, dict[str, Any]]:
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
            return self.messages_to_prompt(messages)
        request = []
        for index, message in enumerate(messages):
            texts = []
            for block in message.blocks:
                if isinstance(block, TextBlock):
                    texts.append(block.text)
                elif isinstance(block, _MEDIA_BLOCKS):
                    raise GuideError(
                        f"message {index} has a {type(block).__name__}; GuideLLM takes text only (TextBlock)"
                    )
            role = _ROLES.get(message.role, getattr(message.role, "value", str(message.role)))
            request.append({"role": role, "content": "\n".join(texts)})
        return request

    def _options(self, request: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - _CALL_OPTIONS)
        if unknown:
            raise GuideError(f"unknown generation option(s) {unknown}; GuideLLM accepts {sorted(_CALL_OPTIONS)}")
        options: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
            "top_k": self.top_k, "seed": self.seed, "stop": self.stop, "delta_mid": self.delta_mid,
            "delta_influence": self.delta_influence, "layers": self.layers, "heads": self.heads,
        }
        if self.metric is not None and _has_influence_span(request):
            options["metric"] = self.metric
        options.update(kwargs)
        return options

    async def _agenerate(self, request: Any, kwargs: dict[str, Any]) -> GenerationResult:
        stream = await asyncio.to_thread(self._engine.stream, request, **self._options(request, kwargs))
        result = None
        async for _, result in _apieces(stream):
            pass
        assert result is not None  # _apieces always ends with the result
        return result

    def _stream_responses(self, stream: GenerationStream, chunk: Any, span_id: Optional[str]) -> Iterator[Any]:
        text = ""
        with closing(_pieces(stream)) as pieces:  # a consumer that stops early stops decoding
            for piece, result in pieces:
                text += piece
                yield chunk(text, piece, result, span_id)

    async def _astream_responses(self, stream: GenerationStream, chunk: Any, span_id: Optional[str]) -> AsyncIterator[Any]:
        text = ""
        async with aclosing(_apieces(stream)) as pieces:
            async for piece, result in pieces:
                text += piece
                yield chunk(text, piece, result, span_id)

    def _completion_chunk(self, text: str, piece: str, result: Optional[GenerationResult], span_id: Optional[str]) -> CompletionResponse:
        if result is None:
            return CompletionResponse(text=text, delta=piece)
        return self._completion_response(result, piece, span_id=span_id)

    def _chat_chunk(self, text: str, piece: str, result: Optional[GenerationResult], span_id: Optional[str]) -> ChatResponse:
        if result is None:
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
        return self._chat_response(result, piece, span_id=span_id)

    def _extras(self, result: GenerationResult, span_id: Optional[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``additional_kwargs`` and ``raw`` of a finished call; dispatches its InfluenceEvent."""
        spans = [s.to_dict() for s in result.spans]
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        record = {
            "id": str(uuid4()), "model": self.metadata.model_name, "spans": spans, **usage,
            "finish_reason": result.finish_reason, "prompt_text": result.prompt_text,
        }
        raw: dict[str, Any] = {GUIDE_METADATA_KEY: record, "usage": usage, "influence": None}
        if result.influence is not None:
            raw["influence"] = result.influence.to_dict()
            where = {"span_id": span_id} if span_id is not None else {}  # a stream ends after its call's span
            dispatcher.event(InfluenceEvent(model=record["model"], text=result.text, influence=raw["influence"], **where))
        return {"spans": spans, **usage, "finish_reason": result.finish_reason}, raw

    def _completion_response(self, result: GenerationResult, delta: str, span_id: Optional[str] = None) -> CompletionResponse:
        extra, raw = self._extras(result, span_id)
        return CompletionResponse(text=result.text, delta=delta, additional_kwargs=extra, raw=raw)

    def _chat_response(self, result: GenerationResult, delta: str, span_id: Optional[str] = None) -> ChatResponse:
        extra, raw = self._extras(result, span_id)
        message = ChatMessage(role=MessageRole.ASSISTANT, content=result.text)
        return ChatResponse(message=message, delta=delta, additional_kwargs=extra, raw=raw)


def _has_influence_span(request: Any) -> bool:
    """Whether a prompt has an unescaped ``<?->`` opener (escaped ones read ``<\\?->``)."""
    if isinstance(request, str):
        return "<?->" in request
    return any("<?->" in m["content"] for m in request)


def _pieces(stream: GenerationStream) -> Iterator[tuple[str, Optional[GenerationResult]]]:
    """``(piece, None)`` per text piece, the last one held back and paired with the result."""
    try:
        held = ""
        for piece in stream:
            if held:
                yield held, None
            held = piece
        yield held, stream.result
    finally:
        stream.close()  # stops decoding when the consumer stops early


async def _apieces(stream: GenerationStream) -> AsyncIterator[tuple[str, Optional[GenerationResult]]]:
    """:func:`_pieces`, each decoding step run in a worker thread so the event loop stays free."""
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guide-llm")
    step: Optional[Future] = None
    try:
        held = ""
        while True:
            step = worker.submit(next, stream, _DONE)
            piece = await asyncio.wrap_future(step)
            step = None
            if piece is _DONE:
                break
            if held:
                yield held, None
            held = piece
        yield held, stream.result
    finally:
        if step is None:
            stream.close()
        else:  # cancelled mid-step: close once the step in flight returns
            step.add_done_callback(lambda _: stream.close())
        worker.shutdown(wait=False)
