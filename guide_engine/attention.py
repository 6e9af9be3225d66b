"""The ``"guide"`` attention implementation: stock SDPA plus a per-key bias Δ.

GUIDE adds ``Δ_j`` to the scaled logit ``q_i·k_j·scale`` of every query ``i`` that may attend to
key ``j``. The bias depends on the key position only, so it can be applied without a dense
``(q, k)`` float mask, which would cost O(n²) memory and keep SDPA off its fused kernels:

* **extra coordinate** (prefill, and any call with more than one query): append a column to
  the queries (``1`` on the heads that get the bias, ``0`` elsewhere) and to the keys
  (``Δ_j / scale``). The dot product then gains exactly ``Δ_j / scale`` and, after SDPA's
  scaling, the logit gains ``Δ_j``. The causal flag and the boolean padding mask stay as they
  are, so the fused causal kernel still runs and a bias never un-masks a key.
* **additive row** (one query, i.e. a decoding step): a float row of shape
  ``(batch, 1 | heads, 1, kv)``, which is O(kv). Beside a padding or sliding-window mask it goes
  to transformers' SDPA as ``position_bias`` (the argument of T5's relative bias, in every
  supported transformers from 5.18 on), which merges it with the boolean or float mask, so a
  masked key stays masked whatever its Δ; without a mask the row is the mask.

The same extra value column carries the Influence vector (see :mod:`guide_engine.influence`):
``softmax(QKᵀ) · I`` is one more output column of the same kernel call.

Per-request state travels with the call: the model's forward receives ``guide=GuideAttentionState``
and transformers hands every keyword argument down to this function. Without it, or when the
state has nothing to do for a layer, the call is exactly stock SDPA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .alignment import EncodedPrompt
from .options import RequestOptions

__all__ = [
    "ATTENTION_NAME",
    "MAX_ABS_BIAS",
    "GuideAttentionState",
    "InfluenceColumn",
    "build_state",
    "guide_attention_forward",
    "guide_mask",
    "kernel_head_dim",
    "keys_bias",
    "register",
]

ATTENTION_NAME = "guide"
MAX_ABS_BIAS = 1000.0
"""|Δ| beyond this already saturates the softmax (exp(-1000) is 0 even in float32); Δ is clamped to it."""


_HALF_PRECISION = (torch.float16, torch.bfloat16)


def kernel_head_dim(head_dim: int, device_type: str, dtype: torch.dtype) -> int:
    """The last dimension of q′, k′ and v′ for the extra coordinate: ``head_dim + 1``, padded for the fused kernels.

    PyTorch's CUDA dispatcher (``sdp_utils.cpp``) takes memory-efficient attention, the kernel of
    every masked call (padded batches, sliding windows) and of float32, only when the last
    dimension is a multiple of the GEMM alignment: 8 in float16/bfloat16, 4 otherwise. Flash
    attention takes any multiple of 8 up to 256, unmasked. So on CUDA ``head_dim + 1`` is rounded
    up to that alignment (257 → 264 leaves flash's limit but stays on memory-efficient attention).
    On every other device ``head_dim + 1`` is kept: on CPU the flash kernel takes any width, and
    65 and 129 measured as fast as or faster than 68, 72, 132 or 136 (``benchmarks/head_dims.py``,
    docs/benchmarks.md).
    """
    needed = head_dim + 1
    if device_type != "cuda":
        return needed
    alignment = 8 if dtype in _HALF_PRECISION else 4
    return -(-needed // alignment) * alignment


def _with_extra_column(x: torch.Tensor, extra: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` with ``extra`` as column ``x.shape[-1]`` and zeros up to ``width``: one copy."""
    out = x.new_zeros(*x.shape[:-1], width)
    out[..., : x.shape[-1]] = x
    out[..., x.shape[-1]] = extra[..., 0]
    return out


class InfluenceColumn(Protocol):
    """What the attention function needs from an influence tracker (see :mod:`guide_engine.influence`)."""

    def value_column(self, layer_idx: int | None, kv_len: int, value: torch.Tensor) -> torch.Tensor:
        """I⁽ℓ⁻¹⁾ as an extra value column, ``(batch, kv_heads, kv_len, 1)``."""
        ...

    def record_attention_product(self, layer_idx: int | None, per_head: torch.Tensor) -> None:
        """Receive Ā I from the kernel's extra output column, ``(batch, q_len, heads)``."""
        ...


@dataclass
class GuideAttentionState:
    """What one forward call (or one whole ``generate``) needs to apply GUIDE.

    Attributes:
        key_bias: ``(batch, prompt_len)`` Δ per absolute cache position of the prompt. Keys past
            the prompt (generated tokens) get no bias.
        layers: layer indices that get the bias, or ``None`` for all layers.
        heads: query-head indices that get the bias, or ``None`` for all heads.
        pad_offsets: ``(batch,)`` left-padding length of each row, to recover absolute
            positions from position ids; ``None`` when nothing is padded.
        influence: an influence tracker filled during this forward, or ``None``.
        query_from: the first absolute position whose queries get Δ (``delta_queries="output"``:
            the last prompt position); ``None``: every query, as the paper does.
        step_bias: ``(batch, 1 | heads, 1, cache_len)`` the additive row of every decoding step
            against a static cache (:meth:`for_static_cache`): a fixed-shape tensor, so a compiled
            step (CUDA graphs) replays it; ``None`` in the eager loop.
    """

    key_bias: torch.Tensor | None = None
    layers: frozenset[int] | None = None
    heads: tuple[int, ...] | None = None
    pad_offsets: torch.Tensor | None = None
    influence: InfluenceColumn | None = None
    query_from: int | None = None
    step_bias: torch.Tensor | None = None
    _head_cache: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False)

    def applies_to(self, layer_idx: int | None) -> bool:
        """Whether this layer gets the bias (``layers`` selects it)."""
        return self.layers is None or layer_idx in self.layers

    def bias_for_layer(self, layer_idx: int | None) -> torch.Tensor | None:
        """The prompt bias if this layer is biased, else ``None``."""
        return self.key_bias if self.applies_to(layer_idx) else None

    def head_selector(self, num_heads: int, like: torch.Tensor) -> torch.Tensor:
        """``(1, heads, 1, 1)`` tensor: 1 on the biased query heads, 0 elsewhere."""
        key = (num_heads, like.device, like.dtype)
        if key not in self._head_cache:
            sel = torch.zeros(num_heads, dtype=like.dtype, device=like.device)
            sel[list(self.heads) if self.heads is not None else slice(None)] = 1
            self._head_cache[key] = sel.view(1, num_heads, 1, 1)
        return self._head_cache[key]

    def query_selector(
        self, q_len: int, kv_len: int, position_ids: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor | None:
        """``(batch | 1, 1, q_len, 1)``: 1 on the queries that get Δ, 0 elsewhere; ``None`` for all.

        A query's absolute position is its position id plus its row's left padding (or, without
        position ids, the last ``q_len`` of ``kv_len`` positions).
        """
        if self.query_from is None:
            return None
        if position_ids is not None:
            positions = position_ids[:, -q_len:]  # (batch, q_len)
            if self.pad_offsets is not None:
                positions = positions + self.pad_offsets.to(positions.device)[:, None]
        else:
            positions = torch.arange(kv_len - q_len, kv_len, device=like.device)[None, :]
        return (positions >= self.query_from).to(like.dtype)[:, None, :, None]

    def for_static_cache(self, cache_len: int, num_heads: int, dtype: torch.dtype) -> GuideAttentionState:
        """This state with :attr:`step_bias` for decoding steps over a ``cache_len`` static cache.

        Decoding queries come after the prompt, so ``query_from`` selects all of them; the head
        selection is folded into the row. The prompt-shaped fields are dropped, so the state's
        tensors have the same shapes for every prompt length (a compiled step is not recompiled).
        """
        if self.key_bias is None:
            return self
        rows, width = self.key_bias.shape
        row = self.key_bias.new_zeros(rows, 1, 1, cache_len)  # (batch, 1, 1, cache_len)
        row[:, 0, 0, :width] = self.key_bias
        if self.heads is not None:
            row = row * self.head_selector(num_heads, row)  # (batch, heads, 1, cache_len)
        return replace(self, key_bias=None, pad_offsets=None, query_from=None, step_bias=row.to(dtype), _head_cache={})

    def with_reference_twins(self, reference: str = "plain") -> GuideAttentionState:
        """This state for a batch of twice the rows: the rows as they are, then their references.

        ``reference="plain"``: the same rows without Δ; ``"masked"``: the emphasized keys (Δ > 0)
        hidden (bias −:data:`MAX_ABS_BIAS`, in the layers and heads that get Δ) and the others
        plain, as if the span were not there.
        """
        bias = self.key_bias
        if bias is not None:
            masked = reference == "masked"
            twin = torch.where(bias > 0, -MAX_ABS_BIAS, 0.0).to(bias.dtype) if masked else torch.zeros_like(bias)
            bias = torch.cat([bias, twin])
        pads = None if self.pad_offsets is None else torch.cat([self.pad_offsets, self.pad_offsets])
        return GuideAttentionState(bias, self.layers, self.heads, pads, None, self.query_from)


def build_state(
    rows: Sequence[EncodedPrompt],
    options: RequestOptions,
    width: int,
    device: torch.device | str,
    influence: InfluenceColumn | None = None,
) -> GuideAttentionState | None:
    """The attention state of one request: each row's Δ, left-padded to ``width`` tokens.

    Returns ``None`` when no token is biased and nothing is measured, so the forward pass is
    exactly stock SDPA.
    """
    biased = any(row.has_bias for row in rows)
    if not biased and influence is None:
        return None
    bias = torch.zeros(len(rows), width)  # (batch, width)
    pads = torch.tensor([width - len(row.input_ids) for row in rows])  # (batch,)
    for index, row in enumerate(rows):
        bias[index, width - len(row.input_ids) :] = torch.tensor(row.token_deltas)
    # Clamping changes no result (the softmax is saturated) while keeping Δ / scale finite in
    # float16 and float32.
    bias.clamp_(-MAX_ABS_BIAS, MAX_ABS_BIAS)
    return GuideAttentionState(
        key_bias=bias.to(device) if biased else None,
        layers=options.layers,
        heads=options.heads,
        pad_offsets=pads if bool(pads.any()) else None,
        influence=influence,
        query_from=width - 1 if options.delta_queries == "output" else None,
    )


def keys_bias(
    prompt_bias: torch.Tensor, kv_len: int, position_ids: torch.Tensor | None, pad_offsets: torch.Tensor | None
) -> torch.Tensor:
    """Align the prompt bias with the keys this layer sees: ``(batch, kv_len)``.

    With a full cache key ``j`` is absolute position ``j``. A sliding-window layer keeps only the
    last keys, so its ``kv_len`` keys end at the newest token: absolute positions
    ``[total - kv_len, total)``. ``total`` is recovered from the position ids of the newest query
    plus each row's left padding.
    """
    batch, prompt_len = prompt_bias.shape
    offset = 0
    if position_ids is not None:
        last = position_ids[:, -1]
        if pad_offsets is not None:
            last = last + pad_offsets.to(last.device)
        total = int(last.max()) + 1
        offset = max(total - kv_len, 0)
    if offset == 0 and kv_len == prompt_len:
        return prompt_bias
    out = prompt_bias.new_zeros(batch, kv_len)
    stop = min(prompt_len, offset + kv_len)
    if stop > offset:
        out[:, : stop - offset] = prompt_bias[:, offset:stop]
    return out


def guide_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, q_len, head_dim)
    key: torch.Tensor,  # (batch, kv_heads, kv_len, head_dim)
    value: torch.Tensor,  # (batch, kv_heads, kv_len, head_dim)
    attention_mask: torch.Tensor | None,  # bool (batch, 1, q_len, kv_len) or None (pure causal)
    scaling: float | None = None,
    guide: GuideAttentionState | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention with GUIDE's per-key bias; identical to stock SDPA when there is nothing to add."""
    layer_idx = getattr(module, "layer_idx", None)
    if guide is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, num_heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    scaling = head_dim**-0.5 if scaling is None else scaling
    step_bias = guide.step_bias
    if q_len == 1 and step_bias is not None and step_bias.shape[-1] == kv_len and guide.applies_to(layer_idx):
        # A decoding step against a static cache: the row was built once per request.
        row = step_bias.to(query.dtype)  # (batch, 1 | heads, 1, kv_len)
        return _sdpa_with_row(module, query, key, value, attention_mask, row, scaling, kwargs)
    prompt_bias = guide.bias_for_layer(layer_idx)
    tracker = guide.influence
    if prompt_bias is None and tracker is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    bias = None
    if prompt_bias is not None:
        bias = keys_bias(prompt_bias, kv_len, kwargs.get("position_ids"), guide.pad_offsets)
        bias = bias.to(device=key.device, dtype=query.dtype)  # (batch, kv_len)
    value_extra = tracker.value_column(layer_idx, kv_len, value) if tracker is not None else None

    queries = guide.query_selector(q_len, kv_len, kwargs.get("position_ids"), query) if bias is not None else None
    if q_len == 1 and value_extra is None and bias is not None:
        # Decoding step: an O(kv) additive row mask is cheaper than copying the cache.
        row = bias[:, None, None, :]  # (batch, 1, 1, kv_len)
        if guide.heads is not None:
            row = row * guide.head_selector(num_heads, row)  # (batch, heads, 1, kv_len)
        if queries is not None:
            row = row * queries  # (batch, 1 | heads, 1, kv_len)
        return _sdpa_with_row(module, query, key, value, attention_mask, row, scaling, kwargs)

    # Extra coordinate, not `position_bias` (a dense (q, kv) float mask: O(q·kv) memory, and no
    # fused causal kernel in prefill). q gains a column `sel` (1 on biased heads), k gains Δ/scale,
    # v gains the influence vector (or zeros), so q'·k' = q·k + Δ/scale on biased heads;
    # then zeros up to the width the fused kernels take (kernel_head_dim).
    if bias is not None:
        sel = guide.head_selector(num_heads, query).expand(batch, num_heads, q_len, 1)
        if queries is not None:
            sel = sel * queries  # only the queries that get Δ: (batch, heads, q_len, 1)
        key_extra = (bias / scaling)[:, None, :, None].expand(batch, key.shape[1], kv_len, 1)
    else:
        sel = query.new_zeros(batch, num_heads, q_len, 1)
        key_extra = key.new_zeros(batch, key.shape[1], kv_len, 1)
    if value_extra is None:
        value_extra = value.new_zeros(batch, value.shape[1], kv_len, 1)
    value_dim = value.shape[-1]
    width = kernel_head_dim(head_dim, query.device.type, query.dtype)
    query = _with_extra_column(query, sel.to(query.dtype), width)
    key = _with_extra_column(key, key_extra.to(key.dtype), width)
    value = _with_extra_column(
        value, value_extra.to(value.dtype), kernel_head_dim(value_dim, value.device.type, value.dtype)
    )
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    # out: (batch, q_len, heads, padded value width); column value_dim is Ā·(value column)
    if tracker is not None:
        tracker.record_attention_product(layer_idx, out[..., value_dim])  # (batch, q_len, heads)
    return out[..., :value_dim], None


def _sdpa_with_row(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    row: torch.Tensor,  # (batch, 1 | heads, 1, kv_len)
    scaling: float,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    """Stock SDPA with an additive row on the scores: a masked key stays masked whatever its Δ."""
    if attention_mask is None:
        # The row is the whole mask. As `position_bias` beside no mask, transformers would choose
        # `enable_gqa` (for an unmasked call) and then add the row as a float mask: on CUDA that
        # falls to the math kernel, and on CPU it measured 13% slower than the packed heads.
        return sdpa_attention_forward(module, query, key, value, row, scaling=scaling, **kwargs)
    # transformers merges the row with a boolean or float mask (and packs it for grouped-query heads).
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, position_bias=row, **kwargs
    )


guide_mask = sdpa_mask
"""Mask builder for ``"guide"``: transformers' own ``sdpa_mask``, so the attention function gets the
boolean mask (or ``None``, for the fused causal kernel) that stock SDPA gets. A new attention name
needs a mask builder registered under the same name, or transformers passes it no mask at all."""


def register() -> None:
    """Register ``"guide"`` with transformers' attention and mask interfaces (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, guide_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, guide_mask)
