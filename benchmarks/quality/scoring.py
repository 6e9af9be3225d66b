"""Model-side measurements that need no generation: teacher-forced openings and Influence.

One forward pass over ``prompt + opening`` gives both the log-probability of the opening as the
assistant's first tokens and, with an ``InfluenceTracker`` riding along, the Influence (or the
rollout) of the ``<?->`` span at every prompt position. Causal attention means the appended
opening changes nothing at the prompt positions, so the Influence read there is the Influence of
the prompt alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from guide_engine.attention import build_state
from guide_engine.errors import GuideValueError
from guide_engine.influence import InfluenceTracker
from guide_engine.kv_cache import cache_keyword

FRENCH_OPENING = "Voici un résumé"
ENGLISH_OPENING = "Here is a summary"
LAST_K = 5  # prompt positions averaged for "Influence on the last prompt tokens"


@dataclass(frozen=True)
class PromptMeasure:
    """What one forward pass over ``prompt + opening`` tells.

    Attributes:
        logprob: sum of log P(opening token | prompt, earlier opening tokens).
        last_layer: mean Influence over the last ``k`` prompt positions, last decoder layer.
        mean_layers: the same, averaged over all decoder layers (0 … L−1).
        k: how many prompt positions were averaged (never positions of the span itself).
        prompt_tokens: prompt length.
    """

    logprob: float
    last_layer: float
    mean_layers: float
    k: int
    prompt_tokens: int


def opening_ids(engine: Any, opening: str) -> list[int]:
    """Token ids of an assistant opening, as they follow the chat template's generation prompt."""
    return list(engine.tokenizer(opening, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def measure(
    engine: Any, prompt: str, delta: float, opening: list[int], metric: str, last_k: int = LAST_K
) -> PromptMeasure:
    """Teacher-forced log-probability of ``opening`` and Influence of the prompt's ``<?->`` span.

    Args:
        engine: a ``GuideEngine``.
        prompt: a prompt with one ``<?->`` span (the instruction).
        delta: Δ applied to that span (``delta_influence``), i.e. the condition's emphasis.
        opening: token ids appended as the assistant's first tokens.
        metric: ``"influence"`` or ``"attention_rollout"``.
        last_k: how many final prompt positions to average (fewer if the span reaches closer).
    """
    encoded = engine.encode(prompt, delta_influence=delta)
    spans = [s for s in encoded.spans if s.kind == "influence"]
    if len(spans) != 1:
        raise GuideValueError(f"the prompt needs exactly one <?-> span, found {len(spans)}")
    options = engine.request_options(delta_influence=delta, metric=metric)
    n, m = len(encoded.input_ids), len(opening)
    ids = torch.tensor([list(encoded.input_ids) + opening], device=engine.model.device)  # (1, n + m)
    indicator = torch.tensor([list(encoded.influence_mask) + [False] * m], dtype=torch.float32)
    tracker = InfluenceTracker(indicator.to(engine.model.device), metric)
    state = build_state([encoded], options, n, engine.model.device, influence=tracker)
    out = engine.model(input_ids=ids, use_cache=False, logits_to_keep=m + 1, guide=state)
    logits = out.logits[0, :m].float()  # (m, vocab): positions n-1 … n+m-2 predict the opening
    logprob = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(opening, device=logits.device)[:, None])
    k = max(1, min(last_k, n - spans[0].token_end))
    layers = [tracker.layers[layer][n - k : n].mean().item() for layer in range(engine.num_layers)]
    return PromptMeasure(
        logprob=float(logprob.sum()),
        last_layer=layers[-1],
        mean_layers=sum(layers) / len(layers),
        k=k,
        prompt_tokens=n,
    )


@torch.inference_mode()
def opening_logits(engine: Any, prompt: str, delta: float, openings: list[list[int]]) -> list[torch.Tensor]:
    """Teacher-forced logits of each opening after ``prompt`` with emphasis Δ = ``delta``.

    The prompt is run once (its cache kept) and each opening continues from it, so a prompt of
    thousands of tokens costs one forward pass for any number of short openings. Returns, per
    opening of ``m`` tokens, the ``(m, vocab)`` float logits that predict its tokens.
    """
    encoded = engine.encode(prompt, delta_mid=delta)
    options = engine.request_options(delta_mid=delta)
    n = len(encoded.input_ids)
    device = engine.model.device
    state = build_state([encoded], options, n, device)
    kwargs = {"guide": state} if state is not None else {}
    cache = DynamicCache(config=engine.model.config)
    ids = torch.tensor([encoded.input_ids], device=device)
    first = engine.model(
        input_ids=ids, **{cache_keyword(engine.model): cache}, use_cache=True, logits_to_keep=1, **kwargs
    ).logits[0, -1:]
    out = []
    for opening in openings:
        rest = torch.tensor([opening[:-1]], device=device)
        if rest.shape[1]:
            later = engine.model(
                input_ids=rest, **{cache_keyword(engine.model): cache}, use_cache=True, **kwargs
            ).logits[0]
            cache.crop(-(rest.shape[1]))  # back to the prompt alone
            out.append(torch.cat([first, later]).float())
        else:
            out.append(first.float())
    return out


def opening_logprob(logits: torch.Tensor, opening: list[int]) -> float:
    """Sum of log P(opening token) under teacher-forced ``(m, vocab)`` logits."""
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(logprobs.gather(1, torch.tensor(opening, device=logits.device)[:, None]).sum())
