"""vLLM model classes with GUIDE: Δ in the KV cache through one extra key coordinate.

The engine's prefill trick (:mod:`guide_engine.attention`), made permanent: every attention layer
pads its heads to the smallest larger head size its attention backend accepts (:mod:`.heads`: 64 → 80
on the CPU backend, → 72 on FlashAttention) and writes

    q′ = [q, 1, 0…],   k′ = [k, Δ_j / scale, 0…],   v′ = [v, 0…]

so ``q′·k′ · scale = q·k · scale + Δ_j`` in whatever kernel vLLM runs (prefill, decode, chunked,
paged). ``k′`` goes into the paged KV cache, so a key keeps its Δ for every later step and every
later request that reuses its block; generated tokens get Δ = 0. The causal mask (and a sliding
window) are the kernel's own, so a bias never un-masks a key. The padded output columns are zero
and dropped.

Δ arrives in the token ids (:mod:`guide_integrations.vllm.codec`). :class:`GuideModelMixin` splits
each id into the token (for the embedding) and its Δ at the start of the forward pass and writes Δ
into one preallocated buffer that every :class:`GuideAttention` layer reads — a fixed buffer, as
vLLM's own inputs are, so it stays valid under CUDA graphs. The mixin works on any vLLM model whose
attention goes through vLLM's ``Attention`` layer with plain dot-product logits; the classes below
are the families tested here.

Limits: pipeline parallelism is not supported (later ranks receive hidden states, not ids); tensor
parallelism splits heads and each shard pads its own, so it needs no change. Attention with logit
soft-capping or ALiBi is refused: Δ would not be a plain additive bias there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from vllm.config import get_current_vllm_config
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.gemma3 import Gemma3ForCausalLM
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.v1.attention.selector import get_attn_backend

from guide_engine.errors import ModelNotSupportedError

from .codec import decode_ids
from .heads import HeadPadding, choose_padding, padded_head_size, padding_summary

__all__ = [
    "GuideAttention",
    "GuideGemma3ForCausalLM",
    "GuideLlamaForCausalLM",
    "GuideMistralForCausalLM",
    "GuideModelMixin",
    "GuideQwen2ForCausalLM",
    "GuideQwen3ForCausalLM",
    "padded_head_size",
]

logger = init_logger("vllm.guide")  # under vLLM's logger, so the line reaches the server's log in its format


class DeltaBuffer:
    """Δ of every token in the current forward pass, in one buffer all attention layers read."""

    def __init__(self, capacity: int) -> None:
        self.values = torch.zeros(capacity, dtype=torch.float32)  # on vLLM's device: built under its context

    def write(self, delta: torch.Tensor | None, tokens: int) -> None:
        """Store Δ for this pass's ``tokens`` tokens (``None``: embeddings came without ids, Δ = 0)."""
        if tokens > self.values.shape[0]:
            self.values = self.values.new_zeros(tokens)
        if delta is None:
            self.values[:tokens].zero_()
        else:
            self.values[:tokens].copy_(delta)


class GuideAttention(Attention):
    """vLLM's ``Attention`` with one more head coordinate: the key's Δ, in the kernel and the cache."""

    def __init__(self, stock: Attention, delta: DeltaBuffer) -> None:
        impl: Any = stock.impl
        if getattr(impl, "logits_soft_cap", None) or getattr(impl, "alibi_slopes", None) is not None:
            raise ModelNotSupportedError(
                f"{stock.layer_name}: GUIDE needs plain dot-product logits (no soft cap or ALiBi)"
            )
        if stock.head_size_v != stock.head_size:
            raise ModelNotSupportedError(f"{stock.layer_name}: GUIDE needs equal key and value head sizes")
        vllm_config = get_current_vllm_config()
        attention_config = vllm_config.attention_config
        padding = choose_padding(
            stock.head_size,
            stock.attn_backend,
            lambda size: get_attn_backend(  # vLLM's selector, for this layer at another head size
                size,
                stock.dtype,
                stock.kv_cache_dtype,
                has_sink=stock.has_sink,
                use_mm_prefix=stock.use_mm_prefix,
                attn_type=stock.attn_type,
                has_sliding_window=stock.sliding_window is not None,
            ),
            user_chose=attention_config.backend is not None or bool(attention_config.backend_per_kind),
        )
        # Take the stock layer's place under its name, so the KV cache is allocated for the padded size.
        vllm_config.compilation_config.static_forward_context.pop(stock.layer_name)
        super().__init__(
            stock.num_heads,
            padding.padded,
            impl.scale,  # the stock scale: the padding changes no logit
            num_kv_heads=stock.num_kv_heads,
            cache_config=vllm_config.cache_config,
            quant_config=stock.quant_config,
            per_layer_sliding_window=stock.sliding_window,
            prefix=stock.layer_name,
            attn_type=stock.attn_type,
            kv_sharing_target_layer_name=stock.kv_sharing_target_layer_name,
            attn_backend=padding.backend,  # how a vLLM model chooses a layer's backend
        )
        self.padding = padding
        self.stock_head_size = stock.head_size
        self.key_scale = 1.0 / impl.scale
        self.delta = delta

    def forward(
        self,
        query: torch.Tensor,  # (tokens, heads · head)
        key: torch.Tensor,  # (tokens, kv_heads · head)
        value: torch.Tensor,  # (tokens, kv_heads · head)
        output_shape: torch.Size | None = None,
        output_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        tokens, head, pad = query.shape[0], self.stock_head_size, self.head_size - self.stock_head_size
        q = query.view(tokens, self.num_heads, head)
        k = key.view(tokens, self.num_kv_heads, head)
        v = value.view(tokens, self.num_kv_heads, head)
        q_extra = q.new_zeros(tokens, self.num_heads, pad)  # (tokens, heads, pad)
        q_extra[..., 0] = 1
        k_extra = k.new_zeros(tokens, self.num_kv_heads, pad)  # (tokens, kv_heads, pad)
        k_extra[..., 0] = (self.delta.values[:tokens] * self.key_scale).to(k.dtype)[:, None]
        q = torch.cat([q, q_extra], dim=-1).view(tokens, -1)
        k = torch.cat([k, k_extra], dim=-1).view(tokens, -1)
        v = torch.cat([v, v.new_zeros(tokens, self.num_kv_heads, pad)], dim=-1).view(tokens, -1)
        out = super().forward(q, k, v, output_dtype=output_dtype)  # (tokens, heads · padded)
        return out.view(tokens, self.num_heads, self.head_size)[..., :head].reshape(tokens, -1)


class GuideModelMixin(nn.Module):
    """Put before a vLLM ``…ForCausalLM`` class: GUIDE attention in every layer, Δ read from the ids."""

    def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any) -> None:
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ModelNotSupportedError(
                "GUIDE on vLLM does not support pipeline parallelism: later stages receive hidden states, "
                "not the token ids that carry Δ; use tensor parallelism"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self.guide_vocab = vllm_config.model_config.get_vocab_size()
        self.guide_delta = DeltaBuffer(vllm_config.scheduler_config.max_num_batched_tokens)
        stock_layers = [(parent, name, child) for parent in self.modules() for name, child in parent.named_children()]
        paddings: list[tuple[HeadPadding, int, int]] = []
        for parent, name, child in stock_layers:
            if isinstance(child, Attention) and not isinstance(child, GuideAttention):
                layer = GuideAttention(child, self.guide_delta)
                setattr(parent, name, layer)
                if layer.kv_sharing_target_layer_name is None:  # a layer that reads another's cache adds none
                    paddings.append((layer.padding, layer.num_kv_heads, layer.kv_cache_torch_dtype.itemsize))
        if paddings:
            logger.info(padding_summary(paddings))

    def embed_input_ids(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        tokens, _ = decode_ids(input_ids, self.guide_vocab)
        return super().embed_input_ids(tokens, *args, **kwargs)  # type: ignore[misc]

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        delta = None
        if input_ids is not None:
            input_ids, delta = decode_ids(input_ids, self.guide_vocab)
        self.guide_delta.write(delta, positions.shape[-1])
        return super().forward(input_ids, positions, *args, **kwargs)


class GuideLlamaForCausalLM(GuideModelMixin, LlamaForCausalLM):
    """vLLM's Llama (SmolLM2, Llama 2/3 …) with GUIDE."""


class GuideMistralForCausalLM(GuideModelMixin, MistralForCausalLM):
    """vLLM's Mistral with GUIDE."""


class GuideQwen2ForCausalLM(GuideModelMixin, Qwen2ForCausalLM):
    """vLLM's Qwen2 / Qwen2.5 with GUIDE."""


class GuideQwen3ForCausalLM(GuideModelMixin, Qwen3ForCausalLM):
    """vLLM's Qwen3 with GUIDE."""


class GuideGemma3ForCausalLM(GuideModelMixin, Gemma3ForCausalLM):
    """vLLM's Gemma 3 (text) with GUIDE."""
