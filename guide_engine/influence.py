"""Influence and attention rollout of a ``<?->`` span, in one forward pass and linear memory.

For every decoder layer ℓ (the definition in ``docs/influence.md``)::

    I⁽ℓ⁾ = (‖x⁽ℓ⁾‖₁ · I⁽ℓ⁻¹⁾ + ‖o⁽ℓ⁾‖₁ · Ā⁽ℓ⁾I⁽ℓ⁻¹⁾) / (‖x⁽ℓ⁾‖₁ + ‖o⁽ℓ⁾‖₁)      (influence)
    I⁽ℓ⁾ = (I⁽ℓ⁻¹⁾ + Ā⁽ℓ⁾I⁽ℓ⁻¹⁾) / 2                                          (rollout)

``x`` is the residual stream entering the layer, ``o`` what the attention block adds to it, and
``Ā`` the head-averaged attention with every Δ in effect. ``Ā I`` never exists as a matrix: the
attention function appends ``I`` as an extra value column, so the fused kernel returns
``A_h I`` for every head ``h`` beside the usual output. Two read-only hooks per decoder layer
take the L1 norms of ``x`` and ``o``; they act only on a forward that carries a tracker.

This module sits below the engine (the engine measures with it); the plots are imported only
when :meth:`InfluenceResult.plot` or :meth:`InfluenceResult.to_html` is called, so matplotlib is
not paid for otherwise.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from .alignment import AppliedSpan, EncodedPrompt
from .attention import build_state
from .errors import InfluenceError
from .options import Metric, RequestOptions

__all__ = [
    "InfluenceHooks",
    "InfluenceResult",
    "InfluenceTracker",
    "attach_hooks",
    "compute_influence",
    "decoder_layers",
]


class InfluenceTracker:
    """Carries I⁽ℓ⁻¹⁾ from layer to layer during one forward pass (per request)."""

    def __init__(self, indicator: torch.Tensor, metric: Metric) -> None:
        self.metric = metric
        self.current = indicator.float()  # (batch, seq) I⁽ℓ⁻¹⁾
        self.layers: dict[int, torch.Tensor] = {-1: self.current[0].clone()}
        self._x_norm: torch.Tensor | None = None
        self._attention_product: torch.Tensor | None = None

    def value_column(self, layer_idx: int | None, kv_len: int, value: torch.Tensor) -> torch.Tensor:
        """I⁽ℓ⁻¹⁾ shaped as an extra value column: ``(batch, kv_heads, kv_len, 1)``."""
        if kv_len != self.current.shape[1]:
            raise InfluenceError(
                f"influence needs a full, uncached forward pass; layer {layer_idx} saw {kv_len} keys "
                f"for {self.current.shape[1]} positions"
            )
        column = self.current.to(device=value.device, dtype=value.dtype)
        return column[:, None, :, None].expand(value.shape[0], value.shape[1], kv_len, 1)

    def record_attention_product(self, layer_idx: int | None, per_head: torch.Tensor) -> None:
        """Store Ā I from the kernel's extra column, ``per_head``: ``(batch, q_len, heads)``."""
        self._attention_product = per_head.float().mean(dim=-1)  # (batch, q_len)

    def record_layer_input(self, hidden_states: torch.Tensor) -> None:
        """‖x⁽ℓ⁾‖₁ per token, from the residual stream entering the layer."""
        self._x_norm = hidden_states.float().abs().sum(dim=-1)

    def record_attention_output(self, layer_idx: int, added: torch.Tensor) -> None:
        """‖o⁽ℓ⁾‖₁ per token; closes the layer by advancing I."""
        product, previous = self._attention_product, self.current
        if product is None or self._x_norm is None:
            raise InfluenceError(f"layer {layer_idx}: the attention product or the layer input was not recorded")
        product = product.to(previous.device)
        if self.metric == "attention_rollout":
            updated = (previous + product) / 2
        else:
            x_norm = self._x_norm.to(previous.device)
            o_norm = added.float().abs().sum(dim=-1).to(previous.device)
            updated = (x_norm * previous + o_norm * product) / (x_norm + o_norm)
        self.current = updated
        self.layers[layer_idx] = updated[0].clone()
        self._attention_product = self._x_norm = None


def _tracker_from(kwargs: dict[str, Any]) -> InfluenceTracker | None:
    state = kwargs.get("guide")
    return getattr(state, "influence", None)


def _layer_input_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    tracker = _tracker_from(kwargs)
    if tracker is not None:
        tracker.record_layer_input(args[0] if args else kwargs["hidden_states"])


def _attention_output_hook(layer: torch.nn.Module) -> Callable[..., None]:
    # Gemma 2/3 normalize the attention output before adding it to the residual stream.
    post_norm = (
        getattr(layer, "post_attention_layernorm", None) if hasattr(layer, "pre_feedforward_layernorm") else None
    )

    def hook(module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        tracker = _tracker_from(kwargs)
        if tracker is not None:
            added = output[0] if isinstance(output, tuple) else output
            if post_norm is not None:
                added = post_norm(added)
            tracker.record_attention_output(module.layer_idx, added)

    return hook


def decoder_layers(model: torch.nn.Module) -> list[Any]:
    """The decoder layers of a causal LM (modules with a ``self_attn``), in order."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and module and all(hasattr(m, "self_attn") for m in module):
            return list(module)
    return []


class InfluenceHooks:
    """The read-only norm hooks on one model, shared by every engine that wraps it.

    :func:`attach_hooks` hands out the same object for the same model and counts the holders;
    :meth:`release` removes the hooks when the last holder lets go.
    """

    def __init__(self, model: torch.nn.Module, handles: list[Any]) -> None:
        self._model = weakref.ref(model)
        self._handles = handles
        self._holders = 0

    def acquire(self) -> InfluenceHooks:
        """Count one more holder (under ``_hooks_lock``, which the caller holds); return ``self``."""
        self._holders += 1
        return self

    @property
    def attached(self) -> bool:
        """Whether the hooks are still on the model."""
        return bool(self._handles)

    def release(self) -> None:
        """Drop one holder; the last one removes the hooks from the model (idempotent per holder)."""
        with _hooks_lock:
            self._holders = max(self._holders - 1, 0)
            if self._holders:
                return
            for handle in self._handles:
                handle.remove()
            self._handles = []
            model = self._model()
            if model is not None:
                _hooks_by_model.pop(model, None)


_hooks_by_model: weakref.WeakKeyDictionary[torch.nn.Module, InfluenceHooks] = weakref.WeakKeyDictionary()
_hooks_lock = threading.Lock()  # hooks must be attached once per model, whichever thread asks first


def attach_hooks(model: torch.nn.Module) -> InfluenceHooks | None:
    """Attach the read-only norm hooks to ``model`` once, however many engines wrap it.

    Returns:
        The shared hooks (release them with :meth:`InfluenceHooks.release`), or ``None`` when the
        model has no decoder layers with a ``self_attn`` module, so Influence cannot be measured.
    """
    with _hooks_lock:
        hooks = _hooks_by_model.get(model)
        if hooks is None:
            layers = decoder_layers(model)
            if not layers:
                return None
            handles = []
            for layer in layers:
                handles.append(layer.register_forward_pre_hook(_layer_input_hook, with_kwargs=True))
                handles.append(layer.self_attn.register_forward_hook(_attention_output_hook(layer), with_kwargs=True))
            hooks = _hooks_by_model[model] = InfluenceHooks(model, handles)
        return hooks.acquire()


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class InfluenceResult(Mapping):
    """Influence (or rollout) of a span: layer index (−1 … L−1) → 1-D tensor over all positions.

    Attributes:
        layers: the per-layer values; ``result[ℓ]`` indexes them directly.
        tokens: the token strings of prompt and generated text.
        spans: the spans of the prompt (the influence span among them).
        generation_start: index of the first generated token.
        metric: ``"influence"`` or ``"attention_rollout"``.
        delta_influence: the Δ applied to the measured span while measuring.
    """

    layers: dict[int, torch.Tensor]
    tokens: list[str]
    spans: tuple[AppliedSpan, ...]
    generation_start: int
    metric: Metric
    delta_influence: float = 0.0
    token_ids: list[int] = field(default_factory=list, repr=False)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.layers[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        """One line: metric, measured span, layers and length (the tensors stay out of it)."""
        measured = [s for s in self.spans if s.kind == "influence"]
        span = " + ".join(f"{_shorten(s.text)!r} (tokens {s.token_start}:{s.token_end})" for s in measured) or "none"
        keys = sorted(self.layers)
        if not keys:
            layers = "none"
        elif keys == list(range(keys[0], keys[-1] + 1)):
            layers = f"{keys[0]}..{keys[-1]}"
        else:
            layers = ",".join(map(str, keys))
        generated = len(self.tokens) - self.generation_start
        return (
            f"InfluenceResult(metric={self.metric!r}, span={span}, layers={layers}, "
            f"tokens={len(self.tokens)} ({self.generation_start} prompt + {generated} generated), "
            f"delta_influence={self.delta_influence:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats, JSON-serializable."""
        return {
            "metric": self.metric,
            "delta_influence": self.delta_influence,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "generation_start": self.generation_start,
            "spans": [s.to_dict() for s in self.spans],
            "layers": {str(k): [float(v) for v in t.tolist()] for k, t in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InfluenceResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. a callback payload)."""
        return cls(
            layers={int(k): torch.tensor(v) for k, v in data["layers"].items()},
            tokens=list(data["tokens"]),
            spans=tuple(AppliedSpan(**s) for s in data["spans"]),
            generation_start=int(data["generation_start"]),
            metric=data["metric"],
            delta_influence=float(data.get("delta_influence", 0.0)),
            token_ids=list(data.get("token_ids", [])),
        )

    def plot(self, path: str, layers: list[int] | None = None, window: int = 5) -> str:
        """Save log influence against position, with a rolling mean (the paper's figure)."""
        from .plots import plot_influence  # here, not at the top: matplotlib is an optional extra

        return plot_influence(self, path, layers=layers, window=window)

    def to_html(self, path: str) -> str:
        """Save a self-contained token heatmap with a layer selector, viewable offline."""
        from .plots import influence_html

        return influence_html(self, path)


@torch.inference_mode()
def compute_influence(
    model: PreTrainedModel,
    tokenizer: Any,
    encoded: EncodedPrompt,
    generated: list[int],
    options: RequestOptions,
) -> InfluenceResult:
    """Run one extra forward pass over prompt + generated tokens and collect every layer.

    Args:
        model: a model with ``"guide"`` attention and :func:`attach_hooks` attached.
        tokenizer: its tokenizer (for the token strings of the result).
        encoded: the prompt, with its influence span.
        generated: the generated token ids.
        options: the request's options; ``options.metric`` chooses Influence or rollout.
    """
    if options.metric is None:
        raise InfluenceError("compute_influence needs options.metric ('influence' or 'attention_rollout')")
    ids = list(encoded.input_ids) + list(generated)
    indicator = torch.tensor([encoded.influence_mask + [False] * len(generated)], dtype=torch.float32)
    tracker = InfluenceTracker(indicator.to(model.device), options.metric)
    state = build_state([encoded], options, len(encoded.input_ids), model.device, influence=tracker)
    model(input_ids=torch.tensor([ids], device=model.device), use_cache=False, logits_to_keep=1, guide=state)
    num_layers = int(model.config.num_hidden_layers)
    if len(tracker.layers) != num_layers + 1:
        raise InfluenceError(f"influence covered {len(tracker.layers) - 1} of {num_layers} layers")
    return InfluenceResult(
        layers={k: v.cpu() for k, v in sorted(tracker.layers.items())},
        tokens=tokenizer.convert_ids_to_tokens(ids),
        spans=encoded.spans,
        generation_start=len(encoded.input_ids),
        metric=options.metric,
        delta_influence=options.delta_influence,
        token_ids=ids,
    )
