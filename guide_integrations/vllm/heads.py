"""The head size GUIDE pads to on vLLM, asked of the attention backend that runs it, and its price.

:class:`~guide_integrations.vllm.model.GuideAttention` widens every head by one coordinate (the
key's Δ), so it needs a head size above the model's that the attention kernel accepts. Each vLLM
backend says which sizes it accepts through its own class methods (``supports_head_size``, by
default a membership test in ``get_supported_head_sizes``), and each says something else: the CPU
backend a list, FlashAttention multiples of 8 up to 256, FlashInfer 64/128/256/512, Triton any
size from 32. So the padded size is a function of the head size *and* the backend, asked of the
backend class itself (:func:`padded_head_size`); nothing here copies a backend's list.

Where the backend vLLM selected accepts no larger size (Gemma 3's 256 on FlashAttention 2/3),
:func:`choose_padding` asks vLLM's own selector for each larger size in turn and takes the first
backend it returns that accepts the size; the layer is then built with that backend, through
``Attention``'s ``attn_backend`` argument (the way a vLLM model chooses a backend for a layer).
When vLLM's selector finds none, because the user fixed one with ``--attention-backend`` or the
platform has no other, :class:`HeadSizeNotSupportedError` says which flag to set.

Nothing in this module imports vLLM: backends are passed in, and so is the selector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from guide_engine.errors import ModelNotSupportedError

__all__ = [
    "HeadPadding",
    "HeadSizeNotSupportedError",
    "choose_padding",
    "kv_bytes_per_token",
    "padded_head_size",
    "padding_summary",
]

Backend = Any
"""A vLLM attention backend class (``vllm.v1.attention.backend.AttentionBackend`` subclass)."""
Selector = Callable[[int], Backend]
"""vLLM's selector for one head size: the backend it would run a layer of that size on; raises
``ValueError`` when it finds none (vLLM's ``get_attn_backend`` with the layer's other settings)."""


class HeadSizeNotSupportedError(ModelNotSupportedError):
    """No attention backend vLLM will run accepts a head one coordinate wider than the model's."""


def search_limit(head_size: int, backend: Backend) -> int:
    """The largest size tried: twice the head size, or the backend's largest listed size if larger."""
    return max(2 * head_size, *backend.get_supported_head_sizes(), 0)


def padded_head_size(head_size: int, backend: Backend) -> int | None:
    """The smallest head size above ``head_size`` that ``backend`` accepts, or ``None`` if it accepts none.

    Asks the backend class itself (``supports_head_size``, which by default tests membership in
    ``get_supported_head_sizes``), up to :func:`search_limit`.

    Args:
        head_size: the model's head size.
        backend: a vLLM attention backend class.
    """
    for size in range(head_size + 1, search_limit(head_size, backend) + 1):
        if backend.supports_head_size(size):
            return size
    return None


@dataclass(frozen=True)
class HeadPadding:
    """How one attention layer is padded: sizes, the backend that runs it, and why that one."""

    head_size: int
    padded: int
    backend: Backend
    replaced: Backend | None = None
    """The backend vLLM had selected for the stock head size, when it accepted no larger size."""

    @property
    def name(self) -> str:
        return str(self.backend.get_name())


def choose_padding(head_size: int, selected: Backend, select: Selector, *, user_chose: bool = False) -> HeadPadding:
    """The padded size and backend for a layer whose stock head size vLLM runs on ``selected``.

    Args:
        head_size: the layer's stock head size.
        selected: the backend vLLM selected for the stock layer.
        select: vLLM's selector for another head size (see :data:`Selector`).
        user_chose: the backend was fixed by the user (``--attention-backend``); only the error says so.

    Raises:
        HeadSizeNotSupportedError: neither ``selected`` nor any backend vLLM selects accepts a larger size.
    """
    size = padded_head_size(head_size, selected)
    if size is not None:
        return HeadPadding(head_size, size, selected)
    limit = search_limit(head_size, selected)
    for size in range(head_size + 1, limit + 1):
        try:
            backend = select(size)
        except ValueError:  # vLLM's selector: no valid backend for this size
            continue
        if backend.supports_head_size(size):  # the CPU platform returns its one backend for any size
            return HeadPadding(head_size, size, backend, replaced=selected)
    chose = "you chose it with --attention-backend; unset that flag so vLLM may choose another, or set it to"
    advice = chose if user_chose else "vLLM selects no other backend here; set --attention-backend to"
    raise HeadSizeNotSupportedError(
        f"attention head size {head_size}: GUIDE adds one coordinate per head, and the "
        f"{selected.get_name()} attention backend accepts no head size from {head_size + 1} to {limit}; "
        f"{advice} a backend that accepts a larger head"
    )


def kv_bytes_per_token(kv_heads: int, head_size: int, element_bytes: int) -> int:
    """KV cache bytes per token of one layer: its keys and values, ``kv_heads`` heads of ``head_size``."""
    return 2 * kv_heads * head_size * element_bytes


def padding_summary(layers: Iterable[tuple[HeadPadding, int, int]]) -> str:
    """The one log line that says what the padding costs: sizes, backend, KV cache bytes per token against stock.

    Args:
        layers: each cache-owning layer's padding, its number of key/value heads (on this worker)
            and the bytes of one KV cache element (4 for fp32, 2 for bf16).
    """
    layers = list(layers)
    stock = sum(kv_bytes_per_token(kv_heads, p.head_size, size) for p, kv_heads, size in layers)
    padded = sum(kv_bytes_per_token(kv_heads, p.padded, size) for p, kv_heads, size in layers)
    shapes = []
    for padding, _, _ in layers:
        shape = f"{padding.head_size} → {padding.padded} on {padding.name}"
        if padding.replaced is not None:
            shape += f" (chosen by GUIDE: {padding.replaced.get_name()} accepts no larger head)"
        if shape not in shapes:
            shapes.append(shape)
    increase = 100 * (padded - stock) / stock if stock else 0.0
    return (
        f"GUIDE attention heads: head size {', '.join(shapes)}; "
        f"KV cache {padded} bytes per token against {stock} stock (+{increase:.1f} %)"
    )
