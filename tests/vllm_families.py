"""Tiny random models of each family GUIDE serves on vLLM, and a transformers reference with Δ.

Used by ``tests/test_vllm.py`` in the vLLM environment. The reference is written out here rather
than taken from ``guide_engine``, so it is independent of both implementations: explicit causal
attention whose logits get ``+Δ_j`` on key ``j``, which is what GUIDE means (SPEC section 3).
"""

from __future__ import annotations

import os
import shutil

import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

REFERENCE_ATTENTION = "guide_reference_bias"
KEY_BIAS: dict[str, torch.Tensor] = {"bias": torch.zeros(0)}
"""Δ per key of the sequence being scored; set by :func:`reference_logprobs`."""

COMMON = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "initializer_range": 0.3,  # large weights: sharp attention, so Δ visibly moves the logits
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": True,
}
FAMILIES = {
    "MistralForCausalLM": ("MistralConfig", {"sliding_window": None}),
    "Qwen2ForCausalLM": ("Qwen2Config", {}),
    "Qwen3ForCausalLM": ("Qwen3Config", {}),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", {"sliding_window": 512, "query_pre_attn_scalar": 16}),
}


def _biased_attention(module, query, key, value, attention_mask, **kwargs):
    """Causal attention with ``+Δ_j`` on the logits of key ``j`` (one sequence, no padding)."""
    q_len, k_len = query.shape[2], key.shape[2]
    mask = torch.full((q_len, k_len), float("-inf"), dtype=query.dtype).triu(1 + k_len - q_len)
    mask = mask + KEY_BIAS["bias"][:k_len].to(query.dtype)
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, mask[None, None], is_causal=False, **kwargs)


AttentionInterface.register(REFERENCE_ATTENTION, _biased_attention)


def build_model(architecture: str, folder: str, tokenizer_folder: str):
    """A seeded random model of ``architecture`` saved in ``folder`` with SmolLM2's tokenizer; returns it."""
    import transformers

    config_class, extra = FAMILIES[architecture]
    config = getattr(transformers, config_class)(**COMMON, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=REFERENCE_ATTENTION)
    model.eval()
    if not os.path.isfile(os.path.join(folder, "config.json")):
        model.save_pretrained(folder)
        for name in os.listdir(tokenizer_folder):
            if name.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(os.path.join(tokenizer_folder, name), folder)
    return model


@torch.no_grad()
def reference_logprobs(model, prompt_ids: list[int], deltas: list[float], generated: list[int]) -> list[float]:
    """Teacher-forced log-probability of each generated token, with Δ on the prompt's keys."""
    ids = torch.tensor([prompt_ids + generated])
    KEY_BIAS["bias"] = torch.tensor(deltas + [0.0] * len(generated))
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(1, torch.tensor(generated)[:, None])[:, 0].tolist()


PROMPT = [{"role": "user", "content": "Keep <!!!->the number forty-two<-!!!> in mind. Which number?"}]


def check_family(architecture: str, root: str, tokenizer_folder: str) -> dict[str, float]:
    """Serve a tiny random ``architecture`` with GUIDE in vLLM; compare its log-probs with the reference.

    Returns the emphasized prompt tokens, the largest |vLLM − reference| over 8 greedy tokens, and
    the largest change Δ makes in the reference (so a dropped Δ cannot pass).
    """
    from vllm import LLM, SamplingParams

    from guide_integrations.vllm import ARCHITECTURES
    from guide_integrations.vllm.codec import decode_ids

    model = build_model(architecture, os.path.join(root, architecture), tokenizer_folder)
    llm = LLM(
        model=os.path.join(root, architecture),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        tokenizer_mode="guide",
        hf_overrides={"architectures": [ARCHITECTURES[architecture]]},
        distributed_executor_backend="uni",
        seed=0,
    )
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=0)
    reply = llm.chat(PROMPT, params, chat_template_kwargs={"delta_mid": 3.0}, use_tqdm=False)[0]
    generated = list(reply.outputs[0].token_ids)
    tokens, deltas = decode_ids(torch.tensor(list(reply.prompt_token_ids)), COMMON["vocab_size"])
    served = [step[token].logprob for step, token in zip(reply.outputs[0].logprobs, generated)]
    expected = reference_logprobs(model, tokens.tolist(), deltas.tolist(), generated)
    plain = reference_logprobs(model, tokens.tolist(), [0.0] * len(deltas), generated)
    del llm
    return {
        "emphasized_tokens": int((deltas != 0).sum()),
        "max_abs_error": max(abs(a - b) for a, b in zip(served, expected)),
        "max_abs_delta_effect": max(abs(a - b) for a, b in zip(expected, plain)),
    }


if __name__ == "__main__":  # python tests/vllm_families.py ROOT TOKENIZER_FOLDER: one JSON line
    import json
    import sys

    root, tokenizer_folder = sys.argv[1], sys.argv[2]
    results = {name: check_family(name, root, tokenizer_folder) for name in FAMILIES}
    print(json.dumps(results))
