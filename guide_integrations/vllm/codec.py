"""Δ carried in token ids: ``id + vocab · code(Δ)``, and back.

vLLM moves prompts through its scheduler, prefix cache and workers as token ids only. GUIDE's
Δ rides along in the ids: an emphasized token ``t`` with bias Δ becomes ``t + vocab · c``, where
``c`` is Δ rounded to a multiple of :data:`DELTA_STEP` and folded to a non-negative integer
(``0 → 0``, ``+q → 2q − 1``, ``−q → 2q``). A token without bias keeps its id, so a prompt without
tags is exactly the plain prompt, and two prompts that differ in Δ differ in ids — which is what
keeps vLLM's prefix cache correct: its block hashes are hashes of ids.

The ids stay below ``2**31`` (vLLM keeps them in int32 buffers), which bounds ``|Δ|``; see
:func:`max_abs_delta`. This module is pure Python plus torch for the model-side decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["DELTA_STEP", "ID_LIMIT", "decode_ids", "encode_ids", "max_abs_delta"]

DELTA_STEP = 1.0 / 64
"""Δ is carried as a multiple of this (exact for ``delta_mid`` a multiple of 1/32)."""
ID_LIMIT = 2**31 - 1
"""The largest id vLLM's int32 buffers hold."""


def _max_code(vocab_size: int) -> int:
    return (ID_LIMIT - vocab_size + 1) // vocab_size


def max_abs_delta(vocab_size: int) -> float:
    """The largest |Δ| the ids of a model with this vocabulary can carry (341 for SmolLM2's 49 152)."""
    return (_max_code(vocab_size) // 2) * DELTA_STEP


def encode_ids(token_ids: Sequence[int], deltas: Sequence[float], vocab_size: int) -> list[int]:
    """Shift each id by ``vocab_size · code(Δ)``; |Δ| beyond :func:`max_abs_delta` is clamped."""
    limit = _max_code(vocab_size) // 2
    out = []
    for token, delta in zip(token_ids, deltas, strict=True):
        q = max(-limit, min(limit, round(delta / DELTA_STEP)))
        code = 2 * q - 1 if q > 0 else -2 * q
        out.append(token + vocab_size * code)
    return out


def decode_ids(ids: Any, vocab_size: int) -> tuple[Any, Any]:
    """Torch side of :func:`encode_ids`: ``(token ids, Δ)`` from shifted ids, elementwise."""
    import torch

    code = torch.div(ids, vocab_size, rounding_mode="floor")
    tokens = ids - code * vocab_size
    odd = torch.remainder(code, 2) == 1
    q = torch.where(odd, torch.div(code + 1, 2, rounding_mode="floor"), -torch.div(code, 2, rounding_mode="floor"))
    return tokens, q.to(torch.float32) * DELTA_STEP
