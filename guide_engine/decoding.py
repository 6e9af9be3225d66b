"""The decoding loop: prefill, then one token at a time, with GUIDE's state on every call.

transformers' ``generate`` refuses model keyword arguments it does not know, so per-request
state could only reach the attention function through globals. This loop passes it as a forward
keyword instead and reuses transformers' own pieces (``DynamicCache``, logits warpers), so a
request without tags computes exactly what ``generate`` computes.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers.decoders import DecodeStream
from transformers import DynamicCache, PreTrainedModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .alignment import EncodedPrompt
from .attention import GuideAttentionState
from .kv_cache import CompiledDecoding, cache_keyword, check_prefill, static_cache_length
from .markup_masks import RowMasks
from .options import (
    AUTO_CONTRAST,
    AUTO_CONTRAST_DISTANCE,
    AUTO_MASKED_CONTRAST,
    AUTO_PLAUSIBILITY,
    AUTO_REFERENCE,
    Contrast,
    ContrastReference,
    FinishReason,
    SamplingConfig,
)
from .tools import ToolMarkupFilter

__all__ = [
    "IncrementalDetokenizer",
    "RowDecoder",
    "ContrastPlan",
    "StreamDetokenizer",
    "contrast_of",
    "contrast_plan",
    "decode_steps",
    "detokenizer_for",
    "emphasis_distance",
    "left_pad",
    "logits_processors",
]


def emphasis_distance(encoded: EncodedPrompt) -> int | None:
    """Tokens after the prompt's last emphasized token (Δ ≠ 0); ``None`` without emphasis."""
    last = max((i for i, delta in enumerate(encoded.token_deltas) if delta != 0.0), default=None)
    return None if last is None else len(encoded.input_ids) - 1 - last


def contrast_of(encoded: EncodedPrompt, contrast: Contrast, reference: ContrastReference | None = None) -> float:
    """γ of one prompt: ``contrast`` itself, or for ``"auto"`` the reference's γ
    (:data:`AUTO_MASKED_CONTRAST` for ``"masked"``, :data:`AUTO_CONTRAST` for ``"plain"``; ``None``
    is :data:`AUTO_REFERENCE`) when the emphasis ends at least :data:`AUTO_CONTRAST_DISTANCE`
    tokens before the prompt does, else 0."""
    if contrast != "auto":
        return contrast
    if not _far(encoded):
        return 0.0
    return AUTO_MASKED_CONTRAST if (reference or AUTO_REFERENCE) == "masked" else AUTO_CONTRAST


def _far(encoded: EncodedPrompt) -> bool:
    distance = emphasis_distance(encoded)
    return distance is not None and distance >= AUTO_CONTRAST_DISTANCE


@dataclass(frozen=True)
class ContrastPlan:
    """How the rows of one request are decoded under ``contrast``.

    Attributes:
        gammas: γ of each row (0 = the row's own logits).
        reference: what the twins hold (see :data:`~guide_engine.options.ContrastReference`).
        plausibility: α of the plausibility constraint on contrasted rows (0 = none).
    """

    gammas: list[float]
    reference: ContrastReference = "plain"
    plausibility: float = 0.0


def contrast_plan(
    encoded: Sequence[EncodedPrompt], contrast: Contrast, reference: ContrastReference | None = None
) -> ContrastPlan:
    """The plan of a request: a fixed γ for every row (against ``reference``, ``"plain"`` if
    ``None``), or ``"auto"``'s choice per row (against :data:`AUTO_REFERENCE` if ``None``)."""
    if contrast != "auto":
        return ContrastPlan([float(contrast)] * len(encoded), reference or "plain")
    reference = reference or AUTO_REFERENCE
    return ContrastPlan([contrast_of(e, "auto", reference) for e in encoded], reference, AUTO_PLAUSIBILITY)


def logits_processors(sampling: SamplingConfig) -> LogitsProcessorList:
    """transformers' own warpers for a sampling configuration (none when greedy)."""
    warpers = LogitsProcessorList()
    if not sampling.greedy:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


class IncrementalDetokenizer:
    """Token ids in, new text out, decoding only a short window of ids per token: the fallback
    for tokenizers without a ``tokenizers`` backend (see :func:`detokenizer_for`).

    Decoding the whole sequence at every step costs O(n²) over a generation. Like vLLM and TGI,
    this decodes ids from ``prefix`` (a token already shown) to the end and returns what is new
    past the text of ``prefix..read``; tokenizers that drop a leading space at the start of a
    decode (SentencePiece) or split a character across tokens (byte-level BPE) are then handled:
    text that ends in an incomplete character (``"\ufffd"``) waits for the next token.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # first id of the decode window
        self._read = 0  # ids before this are already turned into text

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        shown = self._decode(self.ids[self._prefix : self._read])
        full = self._decode(self.ids[self._prefix :])
        if len(full) <= len(shown) or (full.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return full[len(shown) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class StreamDetokenizer:
    """Token ids in, new text out, through ``tokenizers``' own :class:`~tokenizers.decoders.DecodeStream`.

    The same contract as :class:`IncrementalDetokenizer` (the pieces and :meth:`flush` add up to
    ``tokenizer.decode(ids, skip_special_tokens=True)``), for a fast tokenizer: ``DecodeStream``
    holds back an incomplete character itself, in Rust. It has no flush, so the ids it still
    holds at the end are decoded here once, after the last token that gave text.

    Args:
        tokenizer: a transformers tokenizer with a ``backend_tokenizer`` (a ``tokenizers.Tokenizer``).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._backend = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._read = 0  # ids before this are already turned into text

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        piece = self._stream.step(self._backend, token_id)
        if piece is None:  # an incomplete character (or a skipped special token)
            return ""
        self._read = len(self.ids)
        return str(piece)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        if self._read == len(self.ids):
            return ""
        # One id of context before the rest, so a tokenizer that drops a leading space keeps it.
        start = max(self._read - 1, 0)
        shown = self._decode(self.ids[start : self._read])
        rest = self._decode(self.ids[start:])[len(shown) :]
        self._read = len(self.ids)
        return rest

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)) if ids else ""


def detokenizer_for(tokenizer: Any) -> StreamDetokenizer | IncrementalDetokenizer:
    """``tokenizers``' ``DecodeStream`` (:class:`StreamDetokenizer`) for a fast tokenizer, else ours.

    A tokenizer that cleans up spaces after decoding (``clean_up_tokenization_spaces``, which
    ``DecodeStream`` does not do) also gets ours, so the text always equals ``tokenizer.decode``.
    """
    fast = getattr(tokenizer, "backend_tokenizer", None) is not None
    if fast and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return StreamDetokenizer(tokenizer)
    return IncrementalDetokenizer(tokenizer)


class RowDecoder:
    """One generated row: ids in, text that is safe to show out, with end-of-sequence, stop strings
    and tool-call markup.

    Text that could still turn out to be the beginning of a stop string is held back, so a stop
    string never reaches the caller. Tool-call markup (``<tool_call>…</tool_call>``) never does
    either: a :class:`~guide_engine.tools.ToolMarkupFilter` takes it out of the text and keeps it in
    :attr:`blocks`, for the engine to read calls from or to report. Each token costs time
    proportional to its own text plus the longest stop string and the markers: the whole
    generation is linear in its length.

    Args:
        tokenizer: the model's tokenizer.
        stop: stop strings.
        eos_ids: end-of-sequence ids.
        tool_markup: take tool-call markup out of the text (``False`` for JSON output, where
            ``"<tool_call>"`` inside a string value is data).

    Attributes:
        ids: the generated ids (the end-of-sequence id included).
        text: the text shown so far (cut before a stop string, without markup); the pieces add up to it.
        finish_reason: ``"stop"``, ``"length"`` or ``None`` while the row is running.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], eos_ids: set[int], *, tool_markup: bool = True) -> None:
        self.stop, self.eos_ids = stop, eos_ids
        self.detokenizer = detokenizer_for(tokenizer)
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: FinishReason | None = None
        self._markup = ToolMarkupFilter() if tool_markup else None
        self._raw = ""  # everything decoded, cut before a stop string
        self._released = 0  # `_raw[:_released]` has passed the stop-string hold-back
        self._hold = max((len(s) for s in stop), default=1) - 1

    @property
    def blocks(self) -> list[str]:
        """The tool-call markup taken out of the text, in order (see :class:`~guide_engine.tools.ToolMarkupFilter`)."""
        return self._markup.blocks if self._markup is not None else []

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to show."""
        self.ids.append(token_id)
        if token_id in self.eos_ids:
            self.finish_reason = "stop"
            return self._append(self.detokenizer.flush(), final=True)
        return self._append(self.detokenizer.push(token_id), final=False)

    def finish(self, reason: FinishReason = "length") -> str:
        """The rest of the text when decoding stops for ``reason`` (``"length"``, or ``"timeout"``)."""
        if self.finish_reason is not None:
            return ""
        text = self._append(self.detokenizer.flush(), final=True, cut_short=True)
        if self.finish_reason is None:  # (a stop string in the flushed text makes it "stop")
            self.finish_reason = reason
        return text

    def _append(self, new_text: str, final: bool, cut_short: bool = False) -> str:
        searched = len(self._raw)
        self._raw += new_text
        # Only a stop string that ends in the new text can be new: look from `hold` chars before it.
        window_start = max(searched - self._hold, 0)
        found = [at for at in (self._raw.find(s, window_start) for s in self.stop) if at >= 0]
        if found:
            self._raw = self._raw[: min(found)]
            self.finish_reason = "stop"
            final, cut_short = True, False
        end = len(self._raw) if final else max(self._released, len(self._raw) - self._hold)
        piece, self._released = self._raw[self._released : end], max(self._released, end)
        if self._markup is not None:
            piece = self._markup.feed(piece)
            if final:
                piece += self._markup.finish(cut_short)
        self.text += piece
        return piece


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows: ``(batch, max_len)`` ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return ids.to(device), attention_mask.to(device)


@torch.inference_mode()
def decode_steps(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # (batch, prompt_len), left-padded
    attention_mask: torch.Tensor,  # (batch, prompt_len)
    state: GuideAttentionState | None,
    sampling: SamplingConfig,
    max_new_tokens: int,
    pad_id: int,
    rows_done: torch.Tensor | None = None,  # (batch,) bool, written by the caller between steps
    *,
    grammar_masks: RowMasks | None = None,
    repetition_penalty: float = 1.0,
    contrast: float | Sequence[float] = 0.0,
    reference: ContrastReference = "plain",
    plausibility: float = 0.0,
    compiled: CompiledDecoding | None = None,
    context_length: int | None = None,
) -> Generator[torch.Tensor, None, None]:
    """Yield the next token of every row, ``(batch,)``, until ``max_new_tokens`` or all rows finish.

    The caller marks rows as done by setting ``rows_done[row] = True`` between steps (end of
    sequence, stop string); rows that are done are fed padding, their grammar masks skip them, and
    their tokens should be ignored. Closing the generator stops decoding at once. (In the engine,
    ``GuideEngine``'s one decoding driver owns ``rows_done``.)

    Each step's logits go through transformers' ``RepetitionPenaltyLogitsProcessor`` (over each
    row's own prompt and generated ids, padding excluded), then the ``grammar_masks`` (one
    grammar per row, over the vocabulary; not to be confused with ``attention_mask``, the
    padding of the prompt), then the sampling warpers; masking before top-k/top-p keeps an
    allowed token among the candidates.

    With ``contrast`` = γ > 0 (and a Δ to contrast), every row runs twice in one batch — as it is
    and as its reference, without Δ, each with its own cache — and the step's logits are
    ``l_Δ + γ (l_Δ − l_0)``;
    both copies are then fed the chosen token. A sequence gives each row its own γ (the twins run
    when any is > 0; a row with γ = 0 gets exactly ``l_Δ``). With ``reference="masked"`` the twin
    hides the emphasized tokens instead of dropping Δ, so ``l_0`` is the prompt without the span.
    With ``plausibility`` = α > 0, a contrasted row may only pick tokens whose emphasized
    probability is ≥ α × its largest (Li et al. 2023); the others fall below every plausible one.

    With ``compiled``, the prompt is prefilled eagerly into a static cache of
    :func:`~guide_engine.kv_cache.static_cache_length` positions (``context_length`` caps it) and
    every step runs the compiled forward, with Δ as one fixed row per request; the tokens are
    those of the eager loop.
    """
    if max_new_tokens <= 0:
        return
    batch = input_ids.shape[0]
    rows_done = torch.zeros(batch, dtype=torch.bool) if rows_done is None else rows_done
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(sampling.seed)
    processors = logits_processors(sampling)
    penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
    # Padding must not count as "seen": replace it by the row's first real token (the penalty
    # looks at the set of ids, so a repeat changes nothing). Batch rows then equal single rows.
    first_real = input_ids.gather(1, attention_mask.argmax(dim=1, keepdim=True))  # (batch, 1)
    seen = torch.where(attention_mask.bool(), input_ids, first_real)
    gamma = torch.tensor(
        [float(contrast)] * batch if isinstance(contrast, (int, float)) else [float(g) for g in contrast],
        device=input_ids.device,
    )[:, None]  # (batch, 1)
    twins = False
    if state is not None and state.key_bias is not None and bool((gamma > 0).any()):
        twins = True  # rows [0, batch) with Δ, rows [batch, 2·batch) their references
        state = state.with_reference_twins(reference)
        input_ids, attention_mask = input_ids.repeat(2, 1), attention_mask.repeat(2, 1)
    rows, width = input_ids.shape
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    keyword = cache_keyword(model)
    prefill: dict[str, Any] = {"guide": state} if state is not None else {}
    steps: dict[str, Any] = prefill
    forward: Any = model
    cache_len = static_cache_length(width + max_new_tokens, context_length)
    if compiled is not None:
        cache: Any = compiled.acquire(rows, cache_len)
        forward = compiled.forward
        if state is not None:
            heads = int(model.config.num_attention_heads)
            steps = {"guide": state.for_static_cache(cache_len, heads, model.dtype)}
    else:
        cache = DynamicCache(config=model.config)
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{keyword: cache},
            **prefill,
        )
        check_prefill(model, cache, width)
        if compiled is not None:
            # One fixed-shape mask for every step: the prompt's padding, then ones (the causal
            # mask hides the positions not yet written).
            full = attention_mask.new_ones(rows, cache_len)
            full[:, :width] = attention_mask
            attention_mask = full
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (batch | 2·batch, vocab)
            if twins:
                emphasized, plain = logits[:batch], logits[batch:]
                logits = emphasized + gamma * (emphasized - plain)  # (batch, vocab)
                if plausibility > 0:
                    logits = _plausible_only(logits, emphasized, plausibility, gamma > 0)
            if penalty is not None:
                logits = penalty(seen, logits)
            if grammar_masks is not None:
                grammar_masks.apply(logits, rows_done)
            scores = processors(seen, logits)  # type: ignore[arg-type]  # (LongTensor is a legacy alias)
            if sampling.greedy:
                next_ids = scores.argmax(dim=-1)
            else:
                probs = torch.softmax(scores, dim=-1)
                next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            next_ids = torch.where(rows_done.to(next_ids.device), torch.full_like(next_ids, pad_id), next_ids)
            if grammar_masks is not None:
                grammar_masks.advance(next_ids, rows_done)
            yield next_ids
            if bool(rows_done.all()) or step == max_new_tokens - 1:
                return
            seen = torch.cat([seen, next_ids[:, None]], dim=-1)
            step_ids = (next_ids.repeat(2) if twins else next_ids)[:, None]
            if compiled is None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=-1)
            position_ids = position_ids[:, -1:] + 1
            out = _step(forward, compiled, step_ids, attention_mask, position_ids, {keyword: cache, **steps})
    finally:
        if compiled is not None:
            compiled.release(cache, rows, cache_len)


IMPLAUSIBLE = 1e4
"""How far below its emphasized logit an implausible token falls: finite, so a grammar that allows
only implausible tokens still leaves a choice."""


def _plausible_only(combined: torch.Tensor, emphasized: torch.Tensor, alpha: float, rows: torch.Tensor) -> torch.Tensor:
    """``combined`` where the emphasized probability is ≥ α × the row's largest; elsewhere, on the
    ``rows`` (``(batch, 1)`` bool) that are contrasted, the emphasized logit − :data:`IMPLAUSIBLE`."""
    probs = torch.softmax(emphasized, dim=-1)
    plausible = probs >= alpha * probs.amax(dim=-1, keepdim=True)
    return torch.where(plausible | ~rows, combined, emphasized - IMPLAUSIBLE)


def _step(
    forward: Any, compiled: CompiledDecoding | None, ids: Any, attention_mask: Any, positions: Any, kwargs: Any
) -> Any:
    """One decoding step's forward; a compiled step holds the engine's step lock (graphs are not re-entrant)."""
    call = dict(input_ids=ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    if compiled is None:
        return forward(**call, **kwargs)
    with compiled.step_lock:
        out = forward(**call, **kwargs)
        # CUDA graphs reuse their output buffers on the next replay: keep this step's logits.
        return type(out)(logits=out.logits.clone())
