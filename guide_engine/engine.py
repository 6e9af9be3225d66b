"""``GuideEngine``: one loaded model, many requests, each with its own spans and Δ."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from .alignment import AppliedSpan, EncodedPrompt, Prompt, encode_prompt
from .attention import ATTENTION_NAME, build_state
from .constraints import GrammarCompiler, is_closed_json, request_grammar
from .decoding import RowDecoder, contrast_plan, decode_steps, left_pad
from .errors import (
    ContextLengthError,
    GenerationTimeoutError,
    GuideValueError,
    ModelNotSupportedError,
    require_finite,
)
from .influence import InfluenceHooks, InfluenceResult, attach_hooks, compute_influence
from .kv_cache import CompiledDecoding
from .loading import load_model_and_tokenizer
from .markup_masks import MarkupVocabulary, RowMasks
from .options import (
    EngineDefaults,
    FinishReason,
    Layers,
    RequestOptions,
    check_heads,
    check_layers,
    check_positive_int,
    request_options,
)
from .tools import (
    TOOL_CALL_OPEN,
    AnsweredCall,
    ToolCall,
    answered_calls,
    has_tool_traffic,
    parse_tool_call,
    prepare_messages,
    template_uses_tools,
)

__all__ = ["GenerationResult", "GenerationStream", "GuideEngine"]


@dataclass
class GenerationResult:
    """The outcome of one request.

    Attributes:
        text: the generated text (cut before a stop string, if one was hit), never with tool-call
            markup in it: see ``tool_calls`` and ``dropped_markup``.
        prompt_tokens: number of prompt tokens.
        completion_tokens: number of generated tokens (the end-of-sequence token included).
        finish_reason: ``"stop"`` (end of sequence or a stop string), ``"length"``,
            ``"tool_calls"`` (the answer is tool calls) or ``"timeout"`` (only on the partial
            result of a :class:`~guide_engine.errors.GenerationTimeoutError`).
        spans: the spans that were applied, with their Δ and token ranges.
        token_ids: the generated token ids.
        prompt_text: the rendered prompt the model saw (tags removed).
        influence: Influence or rollout of the ``<?->`` span when a metric was asked for.
        tool_calls: the calls the model made (empty when none); ``text`` is then what is outside them.
            Only a request that may call tools (``tools`` given, ``tool_choice`` not ``"none"``) has calls.
        parsed: the parsed JSON value for a JSON ``response_format`` (``None`` otherwise, or when the
            output was cut short by ``max_new_tokens``).
        dropped_markup: tool-call markup taken out of ``text`` that is not in ``tool_calls``: a call
            cut short (by ``max_new_tokens``, a stop string, the timeout), a marker cut in the middle
            at the end of an answer cut short (``"<tool"``), and under ``tool_choice="auto"`` a call
            identical to one the conversation already answered (the turn is then decoded again as
            text). A request that may not call tools cannot write markup (``markup_masks``).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    spans: tuple[AppliedSpan, ...]
    token_ids: list[int] = field(repr=False)
    prompt_text: str = field(repr=False)
    influence: InfluenceResult | None = field(default=None, repr=False)
    tool_calls: list[ToolCall] = field(default_factory=list)
    parsed: Any = None
    dropped_markup: list[str] = field(default_factory=list)


class GenerationStream:
    """An iterator of text pieces, as the model produces them; ``.result`` once it is exhausted.

    Decoding runs in the caller's thread, one step per piece, so errors surface where the caller
    iterates and abandoning the iterator (``close()``, ``break``, garbage collection) stops the
    model at once; no thread is left behind.

    Args:
        pieces: a generator that yields text pieces and *returns* the :class:`GenerationResult`.
    """

    def __init__(self, pieces: Generator[str, None, GenerationResult]) -> None:
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            if self.result is None:  # an exhausted generator raises StopIteration(None) again
                self.result = done.value
            raise

    def close(self) -> None:
        """Stop decoding now."""
        self._pieces.close()

    def run_to_end(self) -> GenerationResult:
        """Consume the rest of the stream and return its result."""
        for _ in self:
            pass
        if self.result is None:  # closed before the end
            raise GuideValueError("the stream was closed before it finished; it has no result")
        return self.result


class GuideEngine:
    """A causal LM whose attention follows GUIDE tags.

    Args:
        model: a loaded transformers causal LM; its attention is switched to ``"guide"``.
        tokenizer: its tokenizer (a fast one, for character offsets).
        delta_mid: Δ of level-2 emphasis (level 1 gets half, level 3 double); finite.
        layers: ``"all"`` or the decoder-layer indices that get the bias.
        heads: ``None`` (all) or the query-head indices that get the bias.
        max_new_tokens: default generation length.
        compile: decode with a static cache and ``torch.compile`` (CUDA graphs on a GPU), the
            same tokens as eager decoding; ``True``, or a mapping of ``torch.compile`` options
            (``{"mode": "max-autotune"}``). Each (batch rows, cache length) compiles once; cache
            lengths are powers of two, so most requests reuse a compiled shape. Models with
            sliding-window layers are refused (see docs/engine.md).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        delta_mid: float = 1.0,
        layers: Layers = "all",
        heads: Sequence[int] | None = None,
        max_new_tokens: int = 256,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        _use_guide_attention(model)
        self.model = model
        self.tokenizer = tokenizer
        self.num_layers = int(model.config.num_hidden_layers)
        self.num_heads = int(model.config.num_attention_heads)
        self.defaults = EngineDefaults(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            delta_mid=require_finite("delta_mid", delta_mid),
            layers=check_layers(layers, self.num_layers),
            heads=check_heads(heads, self.num_heads),
            max_new_tokens=check_positive_int("max_new_tokens", max_new_tokens),
        )
        # Read-only hooks, shared by every engine on this model; they act only on forwards that
        # carry an influence tracker.
        self._influence_hooks: InfluenceHooks | None = attach_hooks(model)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.pad_id = int(pad)
        self.grammars = GrammarCompiler(tokenizer, sorted(self.eos_ids))
        self.markup_vocabulary = MarkupVocabulary(tokenizer)
        self._template_tools: bool | None = None
        self._template_lock = threading.Lock()
        self.model.eval()
        self.compiled: CompiledDecoding | None = None
        """The compiled decoding step and its static caches (``compile=True``), else ``None``."""
        if compile is not False:
            if not isinstance(compile, (bool, Mapping)):
                raise GuideValueError(
                    f"compile must be True, False or a mapping of torch.compile options, got {compile!r}"
                )
            self.compiled = CompiledDecoding(model, compile if isinstance(compile, Mapping) else None)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        gguf_file: str | None = None,
        delta_mid: float = 1.0,
        layers: Layers = "all",
        heads: Sequence[int] | None = None,
        dtype: Any = None,
        device_map: Any = None,
        compile: bool | Mapping[str, Any] = False,
        **model_kwargs: Any,
    ) -> GuideEngine:
        """Load a model and wrap it.

        Args:
            model: ``None`` or ``"default"`` for the embedded SmolLM2-135M-Instruct, a hub id, a local
                folder, or a path to a ``.gguf`` file.
            gguf_file: GGUF file name inside ``model`` (a folder or hub repository).
            delta_mid: see :class:`GuideEngine`.
            layers: see :class:`GuideEngine`.
            heads: see :class:`GuideEngine`.
            dtype: torch dtype (or its name) for the weights.
            device_map: passed to transformers (``"auto"``, ``"cpu"``, a dict …).
            compile: see :class:`GuideEngine`.
            **model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.
        """
        loaded, tokenizer = load_model_and_tokenizer(
            model, gguf_file=gguf_file, dtype=dtype, device_map=device_map, **model_kwargs
        )
        return cls(loaded, tokenizer, delta_mid=delta_mid, layers=layers, heads=heads, compile=compile)

    # ----------------------------------------------------------------------------------- settings

    @property
    def delta_mid(self) -> float:
        """Δ of level-2 emphasis when a request does not set ``delta_mid``."""
        return self.defaults.delta_mid

    @property
    def layers(self) -> frozenset[int] | None:
        """Biased layers when a request does not set ``layers`` (``None``: all)."""
        return self.defaults.layers

    @property
    def heads(self) -> tuple[int, ...] | None:
        """Biased query heads when a request does not set ``heads`` (``None``: all)."""
        return self.defaults.heads

    @property
    def max_new_tokens(self) -> int:
        """Generation length when a request does not set ``max_new_tokens``."""
        return self.defaults.max_new_tokens

    @property
    def supports_influence(self) -> bool:
        """Whether Influence can be measured on this model (decoder layers with ``self_attn``)."""
        return self._influence_hooks is not None and self._influence_hooks.attached

    @property
    def template_uses_tools(self) -> bool:
        """Whether the chat template renders ``tools=`` (else tools go in the fallback system text)."""
        if self._template_tools is None:
            with self._template_lock:
                self._template_tools = template_uses_tools(self.tokenizer)
        return self._template_tools

    def close(self) -> None:
        """Detach the influence hooks from the model (once no other engine on it needs them)."""
        if self._influence_hooks is not None:
            self._influence_hooks.release()
            self._influence_hooks = None

    def request_options(self, **options: Any) -> RequestOptions:
        """Check a request's options (see :data:`~guide_engine.options.REQUEST_OPTIONS`) against this model."""
        return request_options(self.defaults, **options)

    # ----------------------------------------------------------------------------------- requests

    def encode(
        self,
        prompt: Prompt,
        *,
        delta_mid: float | None = None,
        delta_influence: float = 0.0,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> EncodedPrompt:
        """Tokenize a tagged prompt and compute each token's Δ (tags never change the ids).

        With ``tools`` (OpenAI-style), the prompt is rendered with them as a request would render it,
        so ``len(encode(...).input_ids)`` counts the prompt tokens of that request.
        """
        options = self.request_options(delta_mid=delta_mid, delta_influence=delta_influence, tools=tools)
        return self._tokenize(prompt, options)

    def generate(self, prompt: Prompt, **options: Any) -> GenerationResult:
        """Generate a completion of a tagged prompt.

        Args:
            prompt: a string (sent as a user message through the chat template when there is one)
                or a list of ``{"role", "content"}`` messages; tags may appear in any message.
            **options: ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``top_k``,
                ``seed``, ``stop`` (strings), ``delta_mid``, ``delta_influence``, ``layers``,
                ``heads``, ``metric`` (``"influence"`` or ``"attention_rollout"``),
                ``response_format``, ``tools``, ``tool_choice``, ``repetition_penalty``, ``timeout``
                (see ``docs/structured-output.md``), ``delta_queries`` (``"all"`` or ``"output"``) and
                ``contrast`` (see ``docs/choosing-delta.md``).

        Raises:
            GenerationTimeoutError: past ``timeout`` seconds; its ``.partial`` is the result so far.
        """
        return self.stream(prompt, **options).run_to_end()

    def stream(self, prompt: Prompt, **options: Any) -> GenerationStream:
        """Like :meth:`generate`, but yields text pieces as tokens are produced.

        The pieces add up to ``.result.text``: tool-call markup is never streamed (``.result`` has the
        calls, parsed, and ``dropped_markup``).
        """
        request = self.request_options(**options)
        deadline = _deadline(request)
        encoded = self._tokenize_checked(prompt, request)
        return GenerationStream(self._one_row_pieces(encoded, request, deadline, answered_calls(prompt)))

    def generate_batch(self, prompts: Sequence[Prompt], **options: Any) -> list[GenerationResult]:
        """Generate for several prompts in one left-padded batch; each row keeps its own spans."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise GuideValueError(f"generate_batch takes a non-empty list of prompts, got {type(prompts).__name__}")
        request = self.request_options(**options)
        deadline = _deadline(request)
        encoded = [self._tokenize_checked(p, request) for p in prompts]
        answered = [answered_calls(p) for p in prompts]
        return _return_value_of(self._decode_rows(encoded, request, deadline, answered))  # texts are in the results

    # -------------------------------------------------------------------------------- internals

    def _one_row_pieces(
        self, encoded: EncodedPrompt, request: RequestOptions, deadline: float | None, answered: list[AnsweredCall]
    ) -> Generator[str, None, GenerationResult]:
        """:meth:`_decode_rows` of one prompt, for :class:`GenerationStream`: its pieces, then its result."""
        pieces = self._decode_rows([encoded], request, deadline, [answered])
        try:
            while True:
                try:
                    _, piece = next(pieces)
                except StopIteration as done:
                    return done.value[0]
                yield piece
        except GenerationTimeoutError as timeout:
            raise GenerationTimeoutError(str(timeout), timeout.partial[0]) from None  # one row: one partial result
        finally:
            pieces.close()

    def _decode_rows(
        self,
        encoded: list[EncodedPrompt],
        request: RequestOptions,
        deadline: float | None,
        answered: Sequence[list[AnsweredCall]] | None = None,
    ) -> Generator[tuple[int, str], None, list[GenerationResult]]:
        """The one decoding driver behind :meth:`generate`, :meth:`stream` and :meth:`generate_batch`.

        Yields ``(row, piece)`` as each row's text becomes safe to show and returns one result per
        row. Under ``tool_choice="auto"``, a call identical to one of the row's ``answered`` calls
        (:func:`~guide_engine.tools.answered_calls`) is not a call: it goes to ``dropped_markup``,
        and a row left without calls is decoded again as text (``tool_choice="none"``), the text
        streamed as usual (a row of calls streamed nothing).

        Raises:
            GenerationTimeoutError: past ``deadline``; ``.partial`` holds one result per row.
        """
        answered = answered or [[] for _ in encoded]
        results = yield from self._decode_once(encoded, request, deadline, answered)
        again = [row for row, result in enumerate(results) if _only_repeats(result, request, answered[row])]
        if not again:
            return results
        text_only = replace(request, tool_choice="none")
        redo = self._decode_once([encoded[row] for row in again], text_only, deadline, [[] for _ in again])
        try:
            while True:
                try:
                    row, piece = next(redo)
                except StopIteration as done:
                    texts: list[GenerationResult] = done.value
                    break
                yield again[row], piece
        except GenerationTimeoutError as timeout:
            for row, partial in zip(again, timeout.partial):
                results[row] = _after_repeats(partial, results[row])
            raise GenerationTimeoutError(str(timeout), results) from None
        finally:
            redo.close()
        for row, text in zip(again, texts):
            results[row] = _after_repeats(text, results[row])
        return results

    def _decode_once(
        self,
        encoded: list[EncodedPrompt],
        request: RequestOptions,
        deadline: float | None,
        answered: Sequence[list[AnsweredCall]],
    ) -> Generator[tuple[int, str], None, list[GenerationResult]]:
        """One pass of the model over the rows: :meth:`_decode_rows` without the second pass.

        It owns the row decoders, ``rows_done`` (the rows that hit end of sequence or a stop
        string, which the token loop feeds padding and the grammar masks skip) and the deadline.
        Closing it stops the model at once.
        """
        decoders = [self._row_decoder(request) for _ in encoded]
        rows_done = torch.zeros(len(encoded), dtype=torch.bool)  # (batch,), written here, read by the loop
        tokens = self._token_loop(encoded, request, rows_done)
        try:
            for next_ids in tokens:
                for row, token in enumerate(next_ids.tolist()):
                    if rows_done[row]:
                        continue
                    piece = decoders[row].push(token)
                    rows_done[row] = decoders[row].finish_reason is not None
                    if piece:
                        yield row, piece
                if bool(rows_done.all()):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    for decoder in decoders:
                        decoder.finish("timeout")
                    partial = [self._result(*row, request) for row in zip(encoded, decoders, answered)]
                    raise GenerationTimeoutError(_timeout_message(request), partial)
        finally:
            tokens.close()
        for row, decoder in enumerate(decoders):
            rest = decoder.finish()  # the held-back text of a row cut by the token budget
            if rest:
                yield row, rest
        return [self._result(*row, request) for row in zip(encoded, decoders, answered)]

    def _token_loop(
        self, encoded: list[EncodedPrompt], request: RequestOptions, rows_done: torch.Tensor
    ) -> Generator[torch.Tensor, None, None]:
        """Left-pad the prompts, build their attention state and grammar masks, and start
        :func:`~guide_engine.decoding.decode_steps`: it yields each step's next ids, ``(batch,)``."""
        device = self.model.device
        ids, attention_mask = left_pad([e.input_ids for e in encoded], self.pad_id, device)
        plan = contrast_plan(encoded, request.contrast, request.contrast_reference)
        return decode_steps(
            self.model,
            ids,
            attention_mask,
            build_state(encoded, request, ids.shape[1], device),
            request.sampling,
            self._token_budget(encoded, request),
            self.pad_id,
            rows_done,
            grammar_masks=self._grammar_masks(request, encoded),
            repetition_penalty=request.repetition_penalty,
            contrast=plan.gammas,
            reference=plan.reference,
            plausibility=plan.plausibility,
            compiled=self.compiled,
            context_length=self.context_length,
        )

    def _token_budget(self, encoded: list[EncodedPrompt], request: RequestOptions) -> int:
        """``max_new_tokens``, cut so the longest prompt and its answer fit in the model's context."""
        budget = request.max_new_tokens
        if self.context_length is not None:
            budget = min(budget, self.context_length - max(len(e.input_ids) for e in encoded))
        return budget

    def _grammar_masks(self, request: RequestOptions, encoded: list[EncodedPrompt]) -> RowMasks:
        """One grammar matcher per row when the request constrains its output; else, as the request
        may not call tools, masks that keep each row from beginning a tool call."""
        grammar = request_grammar(request)
        if grammar is None:
            return self.markup_vocabulary.masks([TOOL_CALL_OPEN in e.text for e in encoded])
        return self.grammars.masks([self.grammars.matcher(grammar) for _ in encoded])

    def _row_decoder(self, request: RequestOptions) -> RowDecoder:
        # JSON output keeps "<tool_call>" inside a string value: it is data there, not markup.
        return RowDecoder(self.tokenizer, request.stop, self.eos_ids, tool_markup=request.response_format is None)

    def _result(
        self, encoded: EncodedPrompt, decoder: RowDecoder, answered: list[AnsweredCall], request: RequestOptions
    ) -> GenerationResult:
        decoder.finish()
        finish_reason: FinishReason = decoder.finish_reason or "length"
        influence = None
        if request.metric is not None and finish_reason != "timeout":
            influence = compute_influence(self.model, self.tokenizer, encoded, decoder.ids, request)
        text, calls, dropped, parsed = decoder.text, list[ToolCall](), list[str](), None
        for block in decoder.blocks:
            call = parse_tool_call(block) if request.calls_tools else None
            if call is not None and request.tool_choice == "auto" and (call.name, call.arguments) in answered:
                call = None  # a repeat of an answered call: see `_decode_rows`
            if call is None:
                dropped.append(block)
            else:
                calls.append(call)
        if calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        if request.response_format is not None:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None  # cut short (max_new_tokens, a stop string, the timeout)
            if finish_reason == "length" and not is_closed_json(parsed):
                parsed = None  # "12" at the limit may be the start of 12345
        return GenerationResult(
            text=text,
            prompt_tokens=len(encoded.input_ids),
            completion_tokens=len(decoder.ids),
            finish_reason=finish_reason,
            spans=encoded.spans,
            token_ids=list(decoder.ids),
            prompt_text=encoded.text,
            influence=influence,
            tool_calls=calls,
            parsed=parsed,
            dropped_markup=dropped,
        )

    def _tokenize(self, prompt: Prompt, request: RequestOptions) -> EncodedPrompt:
        """The prompt with its tools and tool traffic, through the chat template, tokenized."""
        template_tools = None
        if request.tools or has_tool_traffic(prompt):
            if not getattr(self.tokenizer, "chat_template", None):
                raise GuideValueError("tools and tool messages need a tokenizer with a chat template")
            prompt = prepare_messages(prompt, request.tools, template_tools=self.template_uses_tools)
            if request.tools and self.template_uses_tools:
                template_tools = [tool.to_openai() for tool in request.tools]
        return encode_prompt(
            prompt,
            self.tokenizer,
            delta_mid=request.delta_mid,
            delta_influence=request.delta_influence,
            tools=template_tools,
        )

    def _tokenize_checked(self, prompt: Prompt, request: RequestOptions) -> EncodedPrompt:
        encoded = self._tokenize(prompt, request)
        n = len(encoded.input_ids)
        if self.context_length is not None and n >= self.context_length:
            raise ContextLengthError(
                f"prompt has {n} tokens but the model's context is {self.context_length} tokens; shorten the prompt"
            )
        if request.metric is not None and not self.supports_influence:
            raise ModelNotSupportedError(
                f"metric={request.metric!r} needs decoder layers with a `self_attn` module; "
                f"{type(self.model).__name__} has none, so only emphasis is available"
            )
        if request.metric is not None and not any(s.kind == "influence" for s in encoded.spans):
            raise GuideValueError(
                f"metric={request.metric!r} needs an influence span: wrap the text to measure in <?-> … <-?>"
            )
        return encoded


def _only_repeats(result: GenerationResult, request: RequestOptions, answered: list[AnsweredCall]) -> bool:
    """Whether a row ended by itself with calls, every one a repeat of an ``answered`` call."""
    if request.tool_choice != "auto" or result.tool_calls or result.text.strip() or result.finish_reason != "stop":
        return False
    calls = [parse_tool_call(block) for block in result.dropped_markup]
    return bool(calls) and all(c is not None and (c.name, c.arguments) in answered for c in calls)


def _after_repeats(text: GenerationResult, repeats: GenerationResult) -> GenerationResult:
    """The text pass of a row whose first pass only repeated answered calls (reported as dropped)."""
    return replace(text, dropped_markup=repeats.dropped_markup + text.dropped_markup)


_Returned = TypeVar("_Returned")


def _return_value_of(pieces: Generator[Any, None, _Returned]) -> _Returned:
    """Step a generator to its end, dropping what it yields, and return what it returns."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            returned: _Returned = done.value
            return returned


def _deadline(request: RequestOptions) -> float | None:
    return None if request.timeout is None else time.monotonic() + request.timeout


def _timeout_message(request: RequestOptions) -> str:
    return f"generation ran past timeout={request.timeout:g} s; .partial holds what was generated until then"


def _use_guide_attention(model: Any) -> None:
    if not all(hasattr(model, name) for name in ("set_attn_implementation", "is_backend_compatible", "config")):
        raise ModelNotSupportedError(f"{type(model).__name__} is not a transformers model")
    if not model.is_backend_compatible():  # transformers' public check for AttentionInterface support
        raise ModelNotSupportedError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
            "so GUIDE cannot bias it; use a model such as Llama, Mistral, Qwen2/3, Gemma 2/3 or Phi-3"
        )
    try:
        model.set_attn_implementation(ATTENTION_NAME)
    except (ValueError, ImportError) as error:
        raise ModelNotSupportedError(f"{type(model).__name__} cannot use the 'guide' attention: {error}") from error


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
