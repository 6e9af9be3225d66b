"""``GuideEngine``: one loaded model, many requests, each with its own spans and Δ."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from . import attention
from .alignment import AppliedSpan, EncodedPrompt, Prompt, encode_prompt
from .attention import GuideAttentionState
from .decoding import SamplingConfig, decode_steps, left_pad
from .errors import ContextLengthError, GuideError, ModelNotSupportedError
from .influence import METRICS, InfluenceResult, compute_influence, install_hooks
from .loading import load_model_and_tokenizer

Metric = Literal["influence", "attention_rollout"]
MAX_ABS_BIAS = 1000.0
FinishReason = Literal["stop", "length"]


@dataclass
class GenerationResult:
    """The outcome of one request.

    Attributes:
        text: the generated text (cut before a stop string, if one was hit).
        prompt_tokens: number of prompt tokens.
        completion_tokens: number of generated tokens (the end-of-sequence token included).
        finish_reason: ``"stop"`` (end of sequence or a stop string) or ``"length"``.
        spans: the spans that were applied, with their Δ and token ranges.
        token_ids: the generated token ids.
        prompt_text: the rendered prompt the model saw (tags removed).
        influence: Influence or rollout of the ``<?->`` span when a metric was asked for.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    spans: tuple[AppliedSpan, ...]
    token_ids: list[int] = field(repr=False)
    prompt_text: str = field(repr=False)
    influence: InfluenceResult | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RequestOptions:
    """Validated per-request settings (defaults come from the engine)."""

    max_new_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...]
    delta_mid: float
    delta_influence: float
    layers: frozenset[int] | None
    heads: tuple[int, ...] | None
    metric: Metric | None


class GenerationStream:
    """An iterator of text pieces, as the model produces them; ``.result`` once it is exhausted.

    Decoding runs in the caller's thread, one step per piece, so errors surface where the caller
    iterates and abandoning the iterator (``close()``, ``break``, garbage collection) stops the
    model at once; no thread is left behind.
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop decoding now."""
        self._pieces.close()


class _RowDecoder:
    """Incremental detokenization and stop-string handling for one row."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], eos_ids: set[int]) -> None:
        self.tokenizer, self.stop, self.eos_ids = tokenizer, stop, eos_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: FinishReason | None = None
        self._hold = max((len(s) for s in stop), default=1) - 1

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to show."""
        self.ids.append(token_id)
        if token_id in self.eos_ids:
            self.finish_reason = "stop"
            return self._flush(final=True)
        self.text = self.tokenizer.decode([i for i in self.ids if i not in self.eos_ids], skip_special_tokens=True)
        for s in self.stop:
            at = self.text.find(s)
            if at >= 0:
                self.text = self.text[:at]
                self.finish_reason = "stop"
                return self._flush(final=True)
        return self._flush(final=False)

    def _flush(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            end = max(self.emitted, end - self._hold)
            if self.text[:end].endswith("\ufffd"):  # an incomplete multi-byte character
                end -= 1
        piece, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return piece

    def finish(self) -> str:
        """The rest of the text when decoding stops for length."""
        if self.finish_reason is None:
            self.finish_reason = "length"
        return self._flush(final=True)


class GuideEngine:
    """A causal LM whose attention follows GUIDE tags.

    Args:
        model: a loaded transformers causal LM; its attention is switched to ``"guide"``.
        tokenizer: its tokenizer (a fast one, for character offsets).
        delta_mid: Δ of level-2 emphasis (level 1 gets half, level 3 double); finite.
        layers: ``"all"`` or the decoder-layer indices that get the bias.
        heads: ``None`` (all) or the query-head indices that get the bias.
        max_new_tokens: default generation length.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        delta_mid: float = 1.0,
        layers: Literal["all"] | Sequence[int] = "all",
        heads: Sequence[int] | None = None,
        max_new_tokens: int = 256,
    ) -> None:
        attention.register()
        self.model = model
        self.tokenizer = tokenizer
        self._use_guide_attention(model)
        # Read-only hooks; they act only on forwards that carry an influence tracker.
        self.supports_influence = install_hooks(model)
        self.num_layers = int(model.config.num_hidden_layers)
        self.num_heads = int(model.config.num_attention_heads)
        self.delta_mid = _finite("delta_mid", delta_mid)
        self.layers = self._check_layers(layers)
        self.heads = self._check_heads(heads)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.pad_id = int(pad)
        self.model.eval()

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        gguf_file: str | None = None,
        delta_mid: float = 1.0,
        layers: Literal["all"] | Sequence[int] = "all",
        heads: Sequence[int] | None = None,
        dtype: Any = None,
        device_map: Any = None,
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
            **model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.
        """
        loaded, tokenizer = load_model_and_tokenizer(
            model, gguf_file=gguf_file, dtype=dtype, device_map=device_map, **model_kwargs
        )
        return cls(loaded, tokenizer, delta_mid=delta_mid, layers=layers, heads=heads)

    # ----------------------------------------------------------------------------------- public

    def encode(self, prompt: Prompt, *, delta_mid: float | None = None, delta_influence: float = 0.0) -> EncodedPrompt:
        """Tokenize a tagged prompt and compute each token's Δ (tags never change the ids)."""
        mid = self.delta_mid if delta_mid is None else _finite("delta_mid", delta_mid)
        return encode_prompt(prompt, self.tokenizer, delta_mid=mid, delta_influence=_finite("delta_influence", delta_influence))

    def generate(self, prompt: Prompt, **options: Any) -> GenerationResult:
        """Generate a completion of a tagged prompt.

        Args:
            prompt: a string (sent as a user message through the chat template when there is one)
                or a list of ``{"role", "content"}`` messages; tags may appear in any message.
            **options: ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``top_k``,
                ``seed``, ``stop`` (strings), ``delta_mid``, ``delta_influence``, ``layers``,
                ``heads``, ``metric`` (``"influence"`` or ``"attention_rollout"``).
        """
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: Prompt, **options: Any) -> GenerationStream:
        """Like :meth:`generate`, but yields text pieces as tokens are produced."""
        opts = self._options(**options)
        encoded = self._encode_checked(prompt, opts)
        stream = GenerationStream(iter(()))
        stream._pieces = self._stream_pieces(stream, encoded, opts)
        return stream

    def generate_batch(self, prompts: Sequence[Prompt], **options: Any) -> list[GenerationResult]:
        """Generate for several prompts in one left-padded batch; each row keeps its own spans."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise GuideError("generate_batch takes a non-empty list of prompts")
        opts = self._options(**options)
        encoded = [self._encode_checked(p, opts) for p in prompts]
        decoders = [self._row_decoder(opts) for _ in encoded]
        finished = torch.zeros(len(encoded), dtype=torch.bool)
        steps = self._steps(encoded, opts, finished)
        try:
            for next_ids in steps:
                for row, token in enumerate(next_ids.tolist()):
                    if not finished[row]:
                        decoders[row].push(token)
                        finished[row] = decoders[row].finish_reason is not None
        finally:
            steps.close()
        return [self._result(e, d, opts) for e, d in zip(encoded, decoders)]

    # -------------------------------------------------------------------------------- internals

    def _stream_pieces(self, stream: GenerationStream, encoded: EncodedPrompt, opts: RequestOptions) -> Iterator[str]:
        decoder = self._row_decoder(opts)
        finished = torch.zeros(1, dtype=torch.bool)
        steps = self._steps([encoded], opts, finished)
        try:
            for next_ids in steps:
                piece = decoder.push(int(next_ids[0]))
                finished[0] = decoder.finish_reason is not None
                if piece:
                    yield piece
                if finished[0]:
                    break
        finally:
            steps.close()
        rest = decoder.finish()
        if rest:
            yield rest
        stream.result = self._result(encoded, decoder, opts)

    def _steps(self, encoded: list[EncodedPrompt], opts: RequestOptions, finished: torch.Tensor) -> Iterator[torch.Tensor]:
        device = self.model.device
        ids, mask = left_pad([e.input_ids for e in encoded], self.pad_id, device)
        state = self._state(encoded, opts, ids.shape[1])
        longest = max(len(e.input_ids) for e in encoded)
        budget = opts.max_new_tokens
        if self.context_length is not None:
            budget = min(budget, self.context_length - longest)
        return decode_steps(self.model, ids, mask, state, opts.sampling, budget, self.pad_id, finished)

    def _state(self, encoded: list[EncodedPrompt], opts: RequestOptions, width: int, influence: Any = None) -> GuideAttentionState | None:
        if not any(e.has_bias for e in encoded) and influence is None:
            return None
        bias = torch.zeros(len(encoded), width)
        pads = torch.tensor([width - len(e.input_ids) for e in encoded])
        for row, e in enumerate(encoded):
            bias[row, width - len(e.input_ids) :] = torch.tensor(e.token_deltas)
        # |Δ| ≥ MAX_ABS_BIAS already saturates the softmax (exp(-1000) is 0 even in float32), so
        # clamping changes no result while keeping Δ / scale finite in float16 and float32.
        bias.clamp_(-MAX_ABS_BIAS, MAX_ABS_BIAS)
        return GuideAttentionState(
            key_bias=bias.to(self.model.device) if any(e.has_bias for e in encoded) else None,
            layers=opts.layers,
            heads=opts.heads,
            pad_offsets=pads if bool(pads.any()) else None,
            influence=influence,
        )

    def _result(self, encoded: EncodedPrompt, decoder: _RowDecoder, opts: RequestOptions) -> GenerationResult:
        decoder.finish()
        influence = None
        if opts.metric is not None:
            influence = compute_influence(self, encoded, decoder.ids, opts)
        return GenerationResult(
            text=decoder.text,
            prompt_tokens=len(encoded.input_ids),
            completion_tokens=len(decoder.ids),
            finish_reason=decoder.finish_reason or "length",
            spans=encoded.spans,
            token_ids=list(decoder.ids),
            prompt_text=encoded.text,
            influence=influence,
        )

    def _row_decoder(self, opts: RequestOptions) -> _RowDecoder:
        return _RowDecoder(self.tokenizer, opts.stop, self.eos_ids)

    def _encode_checked(self, prompt: Prompt, opts: RequestOptions) -> EncodedPrompt:
        encoded = encode_prompt(prompt, self.tokenizer, delta_mid=opts.delta_mid, delta_influence=opts.delta_influence)
        n = len(encoded.input_ids)
        if self.context_length is not None and n >= self.context_length:
            raise ContextLengthError(
                f"prompt has {n} tokens but the model's context is {self.context_length} tokens; "
                "shorten the prompt"
            )
        if opts.metric is not None and not self.supports_influence:
            raise ModelNotSupportedError(
                f"metric={opts.metric!r} needs decoder layers with a `self_attn` module; "
                f"{type(self.model).__name__} has none, so only emphasis is available"
            )
        if opts.metric is not None and not any(s.kind == "influence" for s in encoded.spans):
            raise GuideError(f"metric={opts.metric!r} needs an influence span: wrap the text to measure in <?-> … <-?>")
        return encoded

    def _options(
        self,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        delta_mid: float | None = None,
        delta_influence: float = 0.0,
        layers: Literal["all"] | Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        metric: Metric | None = None,
    ) -> RequestOptions:
        temperature = _finite("temperature", temperature)
        if temperature < 0:
            raise GuideError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        top_p = _finite("top_p", top_p)
        if not 0 < top_p <= 1:
            raise GuideError(f"top_p must be in (0, 1], got {top_p}")
        if metric is not None and metric not in METRICS:
            raise GuideError(f"metric must be one of {METRICS} or None, got {metric!r}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise GuideError(f"stop must be a non-empty string or a list of them, got {stop!r}")
        return RequestOptions(
            max_new_tokens=_positive_int("max_new_tokens", self.max_new_tokens if max_new_tokens is None else max_new_tokens),
            sampling=SamplingConfig(temperature=temperature, top_p=top_p, top_k=int(top_k), seed=seed),
            stop=stops,
            delta_mid=self.delta_mid if delta_mid is None else _finite("delta_mid", delta_mid),
            delta_influence=_finite("delta_influence", delta_influence),
            layers=self.layers if layers is None else self._check_layers(layers),
            heads=self.heads if heads is None else self._check_heads(heads),
            metric=metric,
        )

    def _check_layers(self, layers: Literal["all"] | Sequence[int]) -> frozenset[int] | None:
        if isinstance(layers, str):
            if layers != "all":
                raise GuideError(f"layers must be 'all' or a list of layer indices, got {layers!r}")
            return None
        chosen = set()
        for layer in layers:
            if not isinstance(layer, int) or not -self.num_layers <= layer < self.num_layers:
                raise GuideError(f"layer {layer!r} is out of range: this model has layers 0..{self.num_layers - 1}")
            chosen.add(layer % self.num_layers)
        return frozenset(chosen)

    def _check_heads(self, heads: Sequence[int] | None) -> tuple[int, ...] | None:
        if heads is None:
            return None
        for head in heads:
            if not isinstance(head, int) or not 0 <= head < self.num_heads:
                raise GuideError(f"head {head!r} is out of range: this model has query heads 0..{self.num_heads - 1}")
        return tuple(sorted(set(heads)))

    @staticmethod
    def _use_guide_attention(model: Any) -> None:
        if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
            raise ModelNotSupportedError(f"{type(model).__name__} is not a transformers model")
        if not getattr(model, "_supports_attention_backend", False):
            raise ModelNotSupportedError(
                f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
                "so GUIDE cannot bias it; use a model such as Llama, Mistral, Qwen2/3, Gemma 2/3 or Phi-3"
            )
        try:
            model.set_attn_implementation(attention.ATTENTION_NAME)
        except (ValueError, ImportError) as error:
            raise ModelNotSupportedError(f"{type(model).__name__} cannot use the 'guide' attention: {error}") from error


def _finite(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GuideError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise GuideError(f"{name} must be a finite number, got {value!r}")
    return number


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GuideError(f"{name} must be a positive integer, got {value!r}")
    return value


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
