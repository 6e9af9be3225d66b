"""Reference implementations the tests compare against: nothing here shares code with the engine.

* ``"guide_reference"`` attention: eager attention that materializes the full score matrix and adds
  Δ as a dense ``(batch, heads, q, kv)`` float bias — the reference package's way.
* ``reference_influence``: Influence and rollout from materialized attention maps and hidden states.
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    AttentionInterface,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from guide_engine.kv_cache import cache_keyword

REFERENCE = "guide_reference"
VOCAB = 49152  # SmolLM2's tokenizer, so the engine can drive tiny models end to end

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)

FAMILIES = {
    "llama": (LlamaForCausalLM, lambda: LlamaConfig(**_COMMON)),
    "mistral": (MistralForCausalLM, lambda: MistralConfig(**_COMMON, sliding_window=None)),
    "qwen2": (Qwen2ForCausalLM, lambda: Qwen2Config(**_COMMON, use_sliding_window=False)),
    # Gemma 3: sliding-window layers (window 6) beside a full one, and a post-attention norm.
    "gemma3": (
        Gemma3ForCausalLM,
        lambda: Gemma3TextConfig(
            **{**_COMMON, "num_hidden_layers": 3},
            head_dim=8,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=8,
        ),
    ),
}


def tiny_model(family: str, attn: str = "guide") -> torch.nn.Module:
    """A tiny random model of ``family`` (seeded by the caller)."""
    cls, config = FAMILIES[family]
    model = cls(config()).eval()
    model.set_attn_implementation(attn)
    return model


def twin(model: torch.nn.Module, attn: str) -> torch.nn.Module:
    """The same weights under another attention implementation."""
    other = type(model)(copy.deepcopy(model.config)).eval()
    other.load_state_dict(model.state_dict())
    other.set_attn_implementation(attn)
    assert model.config._attn_implementation != attn, "the twin must not change the original's attention"
    return other


# --------------------------------------------------------------------------- reference attention


class Recorder:
    """Per-call store for the reference: the dense bias and, optionally, the attention maps."""

    def __init__(self, bias: torch.Tensor | None, layers=None, heads=None, keep_maps: bool = False, rows_from=None):
        self.bias, self.layers, self.heads, self.rows_from = bias, layers, heads, rows_from
        self.keep_maps = keep_maps
        self.maps: dict[int, torch.Tensor] = {}


def reference_attention(module, query, key, value, attention_mask, scaling=None, reference=None, **kwargs):
    """Eager attention with Δ added to a dense score bias (full recompute only: key j = position j)."""
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = query @ key.transpose(-1, -2) * scaling  # (batch, heads, q, kv)
    if attention_mask is not None:
        scores = scores + attention_mask
    layer = module.layer_idx
    if reference is not None and reference.bias is not None and (reference.layers is None or layer in reference.layers):
        dense = torch.zeros_like(scores)
        heads = range(scores.shape[1]) if reference.heads is None else reference.heads
        kv = scores.shape[-1]
        bias = torch.nn.functional.pad(reference.bias, (0, max(0, kv - reference.bias.shape[1])))[:, :kv]
        for h in heads:
            dense[:, h] = bias[:, None, :].to(scores.dtype)
        if reference.rows_from is not None:  # only queries from this position on get Δ
            dense[:, :, : reference.rows_from] = 0
        scores = scores + dense
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if reference is not None and reference.keep_maps:
        reference.maps[layer] = probs.mean(dim=1)  # (batch, q, kv) head-averaged
    out = probs @ value
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE, reference_attention)
AttentionMaskInterface.register(REFERENCE, eager_mask)


# --------------------------------------------------------------------------- reference influence


@torch.no_grad()
def reference_influence(model, ids: torch.Tensor, indicator: torch.Tensor, bias, metric: str):
    """Influence per SPEC section 4, from dense attention maps and hidden states of a reference model.

    ``model`` must use the ``"guide_reference"`` attention. Returns ``{layer: (seq,) tensor}``.
    """
    recorder = Recorder(bias, keep_maps=True)
    added: dict[int, torch.Tensor] = {}
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)][0]
    handles = []
    for i, layer in enumerate(layers):
        post = layer.post_attention_layernorm if hasattr(layer, "pre_feedforward_layernorm") else None

        def keep(module, args, output, i=i, post=post):
            added[i] = post(output[0]) if post is not None else output[0]

        handles.append(layer.self_attn.register_forward_hook(keep))
    try:
        out = model(input_ids=ids, output_hidden_states=True, reference=recorder)
    finally:
        for h in handles:
            h.remove()
    current = indicator.double()[0]
    result = {-1: current.clone()}
    for layer in range(len(layers)):
        x = out.hidden_states[layer][0].double()  # residual entering the layer
        o = added[layer][0].double()
        a = recorder.maps[layer][0].double()  # (seq, seq)
        product = a @ current
        if metric == "attention_rollout":
            current = (current + product) / 2
        else:
            xn, on = x.abs().sum(-1), o.abs().sum(-1)
            current = (xn * current + on * product) / (xn + on)
        result[layer] = current.clone()
    return result


@torch.no_grad()
def assert_cached_decoding_matches(model, reference_model, out, cache, sequence, state, recorder, steps, tol) -> None:
    """Decode ``steps`` greedy tokens one by one from the prefill output ``out`` (with ``cache`` and the
    engine's ``state``); each step's logits must equal ``reference_model`` run on the whole sequence."""
    for step in range(steps):
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, next_id], dim=-1)
        position = torch.tensor([[sequence.shape[1] - 1]])
        out = model(
            input_ids=next_id, **{cache_keyword(model): cache}, use_cache=True, position_ids=position, guide=state
        )
        full = reference_model(sequence, reference=recorder).logits[:, -1]
        torch.testing.assert_close(out.logits[:, -1], full, **tol, msg=f"decoding step {step}")
