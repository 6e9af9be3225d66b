"""``GuideLlamaForCausalLM``: vLLM's Llama with Δ in the KV cache through one extra key coordinate.

The engine's prefill trick (:mod:`guide_engine.attention`), made permanent: every layer pads the
heads to a head size vLLM's attention kernels support (64 → 80) and writes

    q′ = [q, 1, 0…],   k′ = [k, Δ_j / scale, 0…],   v′ = [v, 0…]

so ``q′·k′ · scale = q·k · scale + Δ_j`` in whatever kernel vLLM runs (prefill, decode, chunked,
paged). ``k′`` goes into the paged KV cache, so a key keeps its Δ for every later step and every
later request that reuses its block; generated tokens get Δ = 0. The causal mask is the kernel's
own, so a bias never un-masks a key. The output's padded columns are zero and dropped.

Δ arrives in the token ids (:mod:`guide_integrations.vllm.codec`): the model splits each id into
the token (for the embedding) and its Δ (for the keys) at the start of its forward pass.

Limits: pipeline parallelism is not supported (later ranks receive hidden states, not ids);
tensor parallelism splits heads, and each shard pads its own heads, so it needs no change.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel

from .codec import decode_ids

__all__ = ["ARCHITECTURE", "GuideLlamaForCausalLM", "padded_head_size"]

ARCHITECTURE = "GuideLlamaForCausalLM"
SUPPORTED_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Head sizes of vLLM's CPU attention backend (its ``get_supported_head_sizes``)."""


def padded_head_size(head_dim: int) -> int:
    """The smallest supported head size with room for one more coordinate (64 → 80)."""
    for size in SUPPORTED_HEAD_SIZES:
        if size > head_dim:
            return size
    raise ValueError(f"head_dim {head_dim} leaves no room for GUIDE's coordinate; supported: {SUPPORTED_HEAD_SIZES}")


class GuideLlamaAttention(LlamaAttention):
    """Llama attention whose heads carry GUIDE's coordinate, in the cache and in the kernel."""

    def __init__(self, *args: Any, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(*args, prefix=prefix, **kwargs)
        stock: Any = getattr(self, "attn")  # noqa: B009  (mypy cannot see the base class here)
        # Replace the stock attention layer by the padded one under the same layer name, so the
        # KV cache is allocated for the padded head size.
        get_current_vllm_config().compilation_config.static_forward_context.pop(stock.layer_name)
        self.padded_dim = padded_head_size(self.head_dim)
        self.attn = Attention(
            self.num_heads,
            self.padded_dim,
            self.scaling,  # the stock scale, 1/sqrt(head_dim): the padding changes no logit
            num_kv_heads=self.num_kv_heads,
            cache_config=kwargs.get("cache_config"),
            quant_config=kwargs.get("quant_config"),
            per_layer_sliding_window=stock.sliding_window,
            attn_type=stock.attn_type,
            prefix=stock.layer_name,
        )

    def forward(
        self,
        positions: torch.Tensor,  # (tokens,)
        hidden_states: torch.Tensor,  # (tokens, hidden)
        guide_delta: torch.Tensor | None = None,  # (tokens,) Δ of each token as a key
    ) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        tokens, pad = q.shape[0], self.padded_dim - self.head_dim
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q_extra = q.new_zeros(tokens, self.num_heads, pad)  # (tokens, heads, pad)
        q_extra[..., 0] = 1
        k_extra = k.new_zeros(tokens, self.num_kv_heads, pad)  # (tokens, kv_heads, pad)
        if guide_delta is not None:
            k_extra[..., 0] = (guide_delta / self.scaling).to(k.dtype)[:, None]
        q = torch.cat([q, q_extra], dim=-1).view(tokens, -1)
        k = torch.cat([k, k_extra], dim=-1).view(tokens, -1)
        v = torch.cat([v, v.new_zeros(tokens, self.num_kv_heads, pad)], dim=-1).view(tokens, -1)
        out = self.attn(q, k, v).view(tokens, self.num_heads, self.padded_dim)  # (tokens, heads, padded)
        output, _ = self.o_proj(out[..., : self.head_dim].reshape(tokens, -1))
        return output


class GuideLlamaDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer that hands each token's Δ to its attention."""

    def __init__(self, vllm_config: Any, prefix: str = "", config: Any = None) -> None:
        super().__init__(vllm_config, prefix=prefix, config=config, attn_layer_type=GuideLlamaAttention)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        guide_delta: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states, guide_delta=guide_delta)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class GuideLlamaModel(LlamaModel):
    """Llama's decoder stack; splits shifted ids into tokens and Δ before the embedding."""

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        tokens, _ = decode_ids(input_ids, self.vocab_size)
        return self.embed_tokens(tokens)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        delta = None
        if input_ids is not None:
            input_ids, delta = decode_ids(input_ids, self.vocab_size)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, guide_delta=delta, **kwargs)


class GuideLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's ``LlamaForCausalLM`` with GUIDE: select it with ``hf_overrides={"architectures": [ARCHITECTURE]}``."""

    def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=GuideLlamaDecoderLayer)

    def _init_model(self, vllm_config: Any, prefix: str = "", layer_type: Any = GuideLlamaDecoderLayer) -> Any:
        return GuideLlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)
