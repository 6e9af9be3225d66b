"""``GuideLLM``: a GUIDE engine as a LlamaIndex LLM, for query engines, chat engines, programs and agents."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import aclosing, closing
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.generic_utils import (
    astream_chat_response_to_completion_response,
    chat_response_to_completion_response,
    stream_chat_response_to_completion_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.types import PydanticProgramMode
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from guide_engine import (
    GenerationResult,
    GenerationStream,
    GuideEngine,
    TagError,
    parse_tags,
    shared_engine,
)
from guide_engine.alignment import Prompt
from guide_engine.errors import GuideValueError
from guide_engine.loading import DEFAULT_MODEL_NAMES
from guide_engine.options import Metric

from ..core import SettingsError, agenerate, astream_pieces, checked_field, model_display_name, stream_result
from .events import InfluenceEvent, ResponseAnnotator, response_fields
from .messages import (
    assistant_message,
    engine_messages,
    escape_end_user_texts,
    tool_chat_kwargs,
    tool_selections,
    trusted_copy,
)
from .options import FIELD_OPTIONS, call_options, check_names, from_generate_kwargs
from .provenance import EndUserTexts
from .structured import StructuredRun
from .templates import escaped_template_args

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["GuideLLM"]

dispatcher = get_dispatcher(__name__)


class GuideLLM(FunctionCallingLLM):
    """A local transformers model whose attention follows GUIDE tags, as a LlamaIndex function-calling LLM.

    Tags written in prompt templates (text QA, refine, summary, chat templates), in
    ``system_prompt`` and in prompts passed to ``complete``/``chat`` are applied. Everything a
    template is *formatted with* — retrieved node text, the user's query, earlier answers — is
    escaped first (``escape_template_variables``), so a document containing ``<!!!-> … <-!!!>``
    reaches the model as those literal characters and gets no Δ. Earlier assistant turns and tool
    results are never parsed for tags, and inside a chat engine neither is what its user typed.

    Example:
        >>> from llama_index.core import Settings, VectorStoreIndex, PromptTemplate
        >>> Settings.llm = GuideLLM(model="default", delta_mid=0.5, max_new_tokens=128)  # RAG: see Choosing Δ
        >>> qa = PromptTemplate("Context:\\n{context_str}\\n<!!-> Answer only from the context. <-!!>\\n"
        ...                     "Question: {query_str}\\nAnswer: ")
        >>> index.as_query_engine(text_qa_template=qa).query("...")

    It is a ``FunctionCallingLLM`` (``chat_with_tools``, ``get_tool_calls_from_response``,
    ``FunctionAgent``) and its ``structured_predict``/``as_structured_llm`` decode under the output
    class's JSON schema, so tool calls and structured outputs always parse and validate.

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
    compile: bool | dict[str, Any] = Field(
        default=False,
        description="Decode with a static cache and torch.compile (CUDA graphs on a GPU): True, or torch.compile "
        "options; the same tokens as eager decoding (GuideEngine's `compile`).",
    )
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Tokens the model reads at most, for LlamaIndex's prompt packing and memory "
        "(None: the model config's max_position_embeddings; larger than that is refused).",
    )
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="HuggingFaceLLM-style transformers generate() keywords (temperature, top_p, top_k, "
        "repetition_penalty, do_sample, max_new_tokens, stop_strings), mapped onto the fields below.",
    )
    delta_mid: float | None = Field(
        default=None,
        description="Δ of emphasis level 2 (<!!->); level 1 gets half, level 3 double; negative de-emphasizes "
        "(None: the engine's default, 1.0).",
    )
    delta_influence: float = Field(default=0.0, description="Δ applied to the <?-> influence span (0: measure only).")
    layers: Literal["all"] | list[int] = Field(
        default="all", description="'all' or the decoder-layer indices that get the bias."
    )
    heads: list[int] | None = Field(default=None, description="Query-head indices that get the bias (None: all).")
    delta_queries: Literal["all", "output"] = Field(
        default="all",
        description="Which queries get Δ: 'all' (the paper's GUIDE) or 'output' (the last prompt position and "
        "every generated token); see the Choosing Δ page.",
    )
    contrast: float | Literal["auto"] = Field(
        default=0.0,
        description="γ of contrastive emphasis: each token from l_Δ + γ (l_Δ − l_0), one extra batch row per "
        "request (0: off); 'auto': contrast only where the emphasis ends ≥ 512 tokens before the prompt's end "
        "(see the Choosing Δ page).",
    )
    contrast_reference: Literal["plain", "masked"] | None = Field(
        default=None,
        description="What contrast pushes away from: 'plain' (the prompt without Δ) or 'masked' (the prompt "
        "without the emphasized text, as classifier-free guidance); None: plain for a fixed γ, masked for "
        "'auto'. See the Choosing Δ page.",
    )
    max_new_tokens: int = Field(default=256, description="Most tokens to generate per call.")
    temperature: float = Field(default=0.0, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int = Field(default=0, description="Sample among the k likeliest tokens (0: no limit).")
    repetition_penalty: float = Field(default=1.0, description="transformers' repetition penalty (1.0: off).")
    seed: int | None = Field(default=None, description="Random seed for sampling.")
    stop: list[str] | None = Field(default=None, description="Stop strings; the text is cut before them.")
    timeout: float | None = Field(
        default=None,
        description="Wall-clock seconds a call may take (None: no limit); past it GenerationTimeoutError "
        "(a TimeoutError) is raised, its .partial holding the text so far.",
    )
    metric: Metric | None = Field(
        default="influence",
        description="Measure the <?-> span's influence on calls whose prompt has one, and dispatch it as "
        "an InfluenceEvent (calls without a <?-> span measure nothing). None: never measure.",
    )
    escape_template_variables: bool = Field(
        default=True,
        description="Escape tags in every value formatted into a prompt template (retrieved text, query, "
        "earlier answers), so only the template's own tags create spans. Turn off only for trusted values.",
    )

    _engine: GuideEngine = PrivateAttr()
    _end_users: EndUserTexts = PrivateAttr()

    def __init__(self, *, engine: GuideEngine | None = None, **data: Any) -> None:
        """Load (or reuse) the model.

        Args:
            engine: a ready :class:`~guide_engine.GuideEngine` to use instead of loading ``model``.
            **data: the fields above. The engine is :func:`guide_engine.shared_engine` of ``model``
                and the load options, so a ``ChatGuide`` or another ``GuideLLM`` on the same model
                shares it.

        Raises:
            SettingsError: a field's bad value or an unknown field, in the engine's words
                (``delta_mid must be a finite number, got 'high'``); also pydantic's ``ValidationError``.
            GuideValueError: ``max_tokens`` (use ``max_new_tokens``), an unknown ``generate_kwargs``
                key, a ``context_window`` larger than the model's, ``engine`` with load options.
        """
        check_names(data, "GuideLLM()")
        if engine is not None and not isinstance(engine, GuideEngine):
            raise GuideValueError(f"engine must be a GuideEngine, got {type(engine).__name__}")
        if engine is not None:
            data.setdefault("model", str(getattr(engine.model.config, "name_or_path", "") or "engine"))
        if data.get("generate_kwargs"):
            data.update(from_generate_kwargs(data["generate_kwargs"], data))
        try:
            super().__init__(**data)
        except ValidationError as error:  # said as the engine says it: name, value, what is allowed
            raise SettingsError.of(type(self), error, data) from None
        load: dict[str, Any] = {
            k: v
            for k, v in (("gguf_file", self.gguf_file), ("dtype", self.dtype), ("device_map", self.device_map))
            if v is not None
        }
        if self.compile is not False:
            load["compile"] = self.compile
        if engine is not None and load:
            raise GuideValueError(f"pass either engine= or the load options {sorted(load)}, not both")
        model = None if self.model in DEFAULT_MODEL_NAMES else self.model
        self._engine = engine if engine is not None else shared_engine(model, **load)
        limit = self._engine.context_length
        if self.context_window is None:
            self.context_window = limit or DEFAULT_CONTEXT_WINDOW
        elif limit is not None and self.context_window > limit:
            raise GuideValueError(f"context_window={self.context_window} is larger than the model's context ({limit})")
        ResponseAnnotator.install()
        self._end_users = EndUserTexts.install()

    @field_validator(*FIELD_OPTIONS, mode="wrap")
    @classmethod
    def _engine_check(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        # Fields declare types only; the bounds are the engine's, checked once (core.checked_field).
        return checked_field(str(info.field_name), value, handler)

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
        """Context window, chat and function-calling support; ``num_output`` is ``max_new_tokens``."""
        return LLMMetadata(
            context_window=self.context_window or DEFAULT_CONTEXT_WINDOW,
            num_output=self.max_new_tokens,
            is_chat_model=self._has_chat_template,
            is_function_calling_model=True,
            model_name=model_display_name(self.model),
        )

    # ------------------------------------------------------------------------------ chat
    # One implementation per form (below: _generate, _agenerate, _stream, _astream); chat renders the
    # conversation, complete its prompt, and both hand the engine prompt to the same call.

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation, rendered by the model's chat template.

        Tags apply in system and user messages; assistant turns and tool results are escaped.

        Args:
            messages: the conversation (system, user, assistant and tool turns).
            **kwargs: per-call generation options, as for :meth:`complete`, plus ``tools`` (OpenAI
                form) and ``tool_choice``; :meth:`chat_with_tools` fills both from LlamaIndex tools.
        """
        return self._generate(self._chat_prompt(messages), kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, one response per text piece; the last carries spans, counts and tool calls.

        Tool-call markup is never in the deltas (the engine holds it back); the calls arrive with the last
        response.
        """
        return self._stream(self._chat_prompt(messages), kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` without blocking the event loop; cancelling it stops decoding."""
        return await self._agenerate(self._chat_prompt(messages), kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` without blocking the event loop; each step runs in a worker thread."""
        return await self._astream(self._chat_prompt(messages), kwargs)

    # ------------------------------------------------------------------------ completion
    # complete is chat's answer as a completion, converted by LlamaIndex's own generic_utils (the output
    # half of Ollama's chat_to_completion_decorator). Its input half stays ours: a prompt is not one user
    # message here (a model without a chat template reads it raw; system_prompt, completion_to_prompt
    # and formatted= apply). It calls the undecorated chat call, so only completion events fire, once.

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete a prompt (sent as a user message through the chat template, when there is one).

        Args:
            prompt: the prompt; its tags apply.
            formatted: ``True`` when ``prompt`` is already formatted (``completion_to_prompt`` and
                ``system_prompt`` are then not applied again).
            **kwargs: per-call generation options: ``max_new_tokens``, ``temperature``, ``top_p``,
                ``top_k``, ``repetition_penalty``, ``seed``, ``stop``, ``timeout``, ``delta_mid``,
                ``delta_influence``, ``layers``, ``heads``, ``metric``, ``response_format``.
        """
        return chat_response_to_completion_response(self._generate(self._completion_prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, one response per text piece; the last carries spans and counts."""
        chunks = self._stream(self._completion_prompt(prompt, formatted), kwargs)
        return stream_chat_response_to_completion_response(chunks)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` without blocking the event loop; cancelling it stops decoding."""
        response = await self._agenerate(self._completion_prompt(prompt, formatted), kwargs)
        return chat_response_to_completion_response(response)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` without blocking the event loop; each step runs in a worker thread."""
        chunks = await self._astream(self._completion_prompt(prompt, formatted), kwargs)
        return astream_chat_response_to_completion_response(chunks)

    # ------------------------------------------------------------------- token counting

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids for the visible text of ``text`` (tags are not tokens; no special tokens).

        A tokenizer for LlamaIndex's hooks: ``Settings.tokenizer = llm.tokenize``,
        ``TokenCountingHandler(tokenizer=llm.tokenize)``, ``Memory.from_defaults(tokenizer_fn=...)``.
        Never raises on tags: text with malformed tags (an end user's) is counted as it is.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # empty spans: counting is not the place to warn
                visible = parse_tags(text).text
        except TagError:
            visible = text
        return list(self._engine.tokenizer.encode(visible, add_special_tokens=False))

    def count_tokens(self, prompt: str | Sequence[ChatMessage]) -> int:
        """Prompt tokens of a ``complete`` prompt or ``chat`` messages, as the model reads them.

        Rendered as :meth:`complete`/:meth:`chat` render it (chat template, ``system_prompt``
        for a string), tags excluded.
        """
        rendered = self._completion_prompt(prompt, False) if isinstance(prompt, str) else self._chat_prompt(prompt)
        return len(self._engine.encode(rendered).input_ids)

    # ----------------------------------------------------------------- templates: escaping

    def _get_prompt(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        # predict / stream / apredict / astream format completion prompts here.
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super()._get_prompt(prompt, **prompt_args)

    def _get_messages(self, prompt: BasePromptTemplate, **prompt_args: Any) -> list[ChatMessage]:
        # ... and chat prompts here (GuideLLM is a chat model when the tokenizer has a chat template).
        prompt, prompt_args = self._template_inputs(prompt, prompt_args)
        return super()._get_messages(prompt, **prompt_args)

    def _template_inputs(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> tuple[BasePromptTemplate, dict[str, Any]]:
        if not self.escape_template_variables:
            return prompt, prompt_args
        return escaped_template_args(prompt, prompt_args, llm=self)

    # ------------------------------------------------------------------ structured output
    # Each form: LlamaIndex's own (its program for the mode) when pydantic_program_mode is not the
    # default; otherwise one chat call under the class's JSON schema, its events sent by StructuredRun.

    def structured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """An ``output_cls`` instance, decoded under its JSON schema: it always parses and validates.

        The template's values are escaped (``escape_template_variables``); ``llm_kwargs`` are
        per-call options (e.g. ``max_new_tokens``). With a ``pydantic_program_mode`` other than
        the default, LlamaIndex's program for that mode runs instead.

        Raises:
            GuideValueError: the JSON did not fit in ``max_new_tokens``.
        """
        template, args, run = self._structured(output_cls, prompt, llm_kwargs, prompt_args)
        if run is None:
            return super().structured_predict(output_cls, template, llm_kwargs, **args)
        return run.result(self.chat(run.messages, **run.chat_kwargs))

    async def astructured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """:meth:`structured_predict` without blocking the event loop."""
        template, args, run = self._structured(output_cls, prompt, llm_kwargs, prompt_args)
        if run is None:
            return await super().astructured_predict(output_cls, template, llm_kwargs, **args)
        return run.result(await self.achat(run.messages, **run.chat_kwargs))

    def stream_structured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Generator[Any, None, None]:
        """Partial objects while the constrained JSON streams; the last one is a validated ``output_cls``.

        Lazy, as LlamaIndex's own: nothing is sent and no event fires until the first object is read.
        """
        template, args, run = self._structured(output_cls, prompt, llm_kwargs, prompt_args)
        if run is None:
            yield from super().stream_structured_predict(output_cls, template, llm_kwargs, **args)
            return
        yield from run.objects(self.stream_chat(run.messages, **run.chat_kwargs))

    async def astream_structured_predict(
        self, output_cls: Any, prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> AsyncGenerator[Any, None]:
        """:meth:`stream_structured_predict` without blocking the event loop."""
        template, args, run = self._structured(output_cls, prompt, llm_kwargs, prompt_args)
        if run is None:
            return await super().astream_structured_predict(output_cls, template, llm_kwargs, **args)
        return run.aobjects(await self.astream_chat(run.messages, **run.chat_kwargs))

    def _structured(
        self,
        output_cls: Any,
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None,
        prompt_args: dict[str, Any],
    ) -> tuple[BasePromptTemplate, dict[str, Any], StructuredRun | None]:
        """The template and its escaped values; a run, or ``None`` where LlamaIndex's program formats them."""
        template, args = self._template_inputs(prompt, prompt_args)
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return template, args, None
        messages = super()._get_messages(template, **args)  # the values are escaped already
        return template, args, StructuredRun(output_cls, messages, llm_kwargs, prompt, prompt_args)

    # ----------------------------------------------------------------------- tool calling

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``chat`` keywords: the messages, the tools in OpenAI form, the tool choice (``tool_chat_kwargs``)."""
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        openai_tools = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        return {"messages": messages, **kwargs, **tool_chat_kwargs(openai_tools, tool_required, tool_choice)}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first call unless ``allow_parallel_tool_calls`` (as LlamaIndex's OpenAI LLM does)."""
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not allow_parallel_tool_calls and len(calls) > 1:
            response.message.additional_kwargs["tool_calls"] = calls[:1]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The calls of a ``chat_with_tools`` response as ``ToolSelection``\\ s (id, tool name, arguments).

        Raises:
            GuideValueError: no call, and ``error_on_no_tool_call`` (force one with ``tool_required=True``
                or ``tool_choice="<tool name>"``).
        """
        selections = tool_selections(response.message)
        if not selections and error_on_no_tool_call:
            raise GuideValueError(
                "the response has no tool call (the model answered in text); pass tool_required=True or "
                "tool_choice='<tool name>' to chat_with_tools to force one"
            )
        return selections

    # ------------------------------------------------------------------------- internals

    @property
    def _has_chat_template(self) -> bool:
        return bool(getattr(self._engine.tokenizer, "chat_template", None))

    def _end_user_texts(self) -> tuple[str, ...]:
        """What the end user of a chat engine this call runs inside typed (empty outside chat engines)."""
        return self._end_users.texts_above(active_span_id.get())

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        end_user = self._end_user_texts()
        if not self._has_chat_template:
            return self.messages_to_prompt(trusted_copy(messages, end_user))  # type: ignore[misc]  # LLM sets a default
        return engine_messages(messages, end_user)

    def _completion_prompt(self, prompt: str, formatted: bool) -> Prompt:
        prompt = escape_end_user_texts(prompt, self._end_user_texts())  # a condense step's history and question
        if formatted:
            return prompt
        text = self.completion_to_prompt(prompt) if self.completion_to_prompt else prompt
        if not self.system_prompt:
            return text
        if self._has_chat_template:
            return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": text}]
        return f"{self.system_prompt}\n\n{text}"

    def _options(self, prompt: Prompt, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The engine options of a call on ``prompt``: every field, the call's keywords winning."""
        return call_options({name: getattr(self, name) for name in FIELD_OPTIONS}, prompt, kwargs)

    # The call itself, in four forms: the engine prompt in, chat responses out.

    def _generate(self, prompt: Prompt, kwargs: dict[str, Any]) -> ChatResponse:
        result = self._engine.generate(prompt, **self._options(prompt, kwargs))
        return self._final_response(result, result.text, active_span_id.get())

    async def _agenerate(self, prompt: Prompt, kwargs: dict[str, Any]) -> ChatResponse:
        result = await agenerate(self._engine, prompt, self._options(prompt, kwargs))
        return self._final_response(result, result.text, active_span_id.get())

    def _stream(self, prompt: Prompt, kwargs: dict[str, Any]) -> ChatResponseGen:
        stream = self._engine.stream(prompt, **self._options(prompt, kwargs))
        return self._responses(stream, active_span_id.get())

    async def _astream(self, prompt: Prompt, kwargs: dict[str, Any]) -> ChatResponseAsyncGen:
        stream = await asyncio.to_thread(self._engine.stream, prompt, **self._options(prompt, kwargs))
        return self._aresponses(stream, active_span_id.get())

    def _responses(self, stream: GenerationStream, span_id: str | None) -> ChatResponseGen:
        """One response per text piece; the last piece is held back to come with the result."""
        text = held = ""
        with closing(stream):  # a consumer that stops early stops decoding
            for piece in stream:  # never tool-call markup: the engine holds it back
                if held:
                    text += held
                    yield ChatResponse(message=assistant_message(text), delta=held)
                held = piece
        yield self._final_response(stream_result(stream), held, span_id)

    async def _aresponses(self, stream: GenerationStream, span_id: str | None) -> ChatResponseAsyncGen:
        """:meth:`_responses`, each decoding step in a worker thread; closing or cancelling stops decoding."""
        text = held = ""
        async with aclosing(astream_pieces(stream)) as pieces:
            async for piece in pieces:
                if held:
                    text += held
                    yield ChatResponse(message=assistant_message(text), delta=held)
                held = piece
        yield self._final_response(stream_result(stream), held, span_id)

    def _final_response(self, result: GenerationResult, delta: str, span_id: str | None) -> ChatResponse:
        """The response of a finished call, with what it applied; also sends its InfluenceEvent (only here)."""
        model = model_display_name(self.model)
        additional_kwargs, raw = response_fields(result, model)
        if raw["influence"] is not None:  # inside the call's span, also for a stream read after the span ended
            dispatcher.event(InfluenceEvent(model=model, text=result.text, influence=raw["influence"], span_id=span_id))
        message = assistant_message(result.text, result.tool_calls)
        return ChatResponse(message=message, delta=delta, additional_kwargs=additional_kwargs, raw=raw)
