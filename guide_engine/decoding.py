"""The decoding loop: prefill, then one token at a time, with GUIDE's state on every call.

transformers' ``generate`` refuses model keyword arguments it does not know, so per-request
state could only reach the attention function through globals. This loop passes it as a forward
keyword instead and reuses transformers' own pieces (``DynamicCache``, logits warpers), so a
request without tags computes exactly what ``generate`` computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .attention import GuideAttentionState


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def processors(self) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if not self.greedy:
            warpers.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                warpers.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows: ``(batch, max_len)`` ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def decode_steps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # (batch, prompt_len), left-padded
    attention_mask: torch.Tensor,  # (batch, prompt_len)
    state: GuideAttentionState | None,
    sampling: SamplingConfig,
    max_new_tokens: int,
    pad_id: int,
    finished: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, ``(batch,)``, until ``max_new_tokens`` or all rows finish.

    The caller marks rows as done by setting ``finished[row] = True`` between steps (end of
    sequence, stop string); finished rows are fed padding and their tokens should be ignored.
    Closing the generator stops decoding at once.
    """
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool) if finished is None else finished
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(sampling.seed)
    processors = sampling.processors()
    cache = DynamicCache(config=model.config)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"guide": state} if state is not None else {}
    step_ids, seen = input_ids, input_ids
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        logits = out.logits[:, -1, :].float()  # (batch, vocab)
        scores = processors(seen, logits)
        if sampling.greedy:
            next_ids = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores, dim=-1)
            next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        next_ids = torch.where(finished.to(next_ids.device), torch.full_like(next_ids, pad_id), next_ids)
        yield next_ids
        if bool(finished.all()):
            return
        step_ids = next_ids[:, None]
        seen = torch.cat([seen, step_ids], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
