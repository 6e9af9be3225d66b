"""A tiny random model that writes a given answer: what a real model might write, on demand."""

from __future__ import annotations

import functools

import torch

from guide_engine import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, GuideEngine
from tests.reference import tiny_model

CALL = TOOL_CALL_OPEN + '{"name": "get_weather", "arguments": {"city": "Paris"}}' + TOOL_CALL_CLOSE
"""The call SmolLM2 wrote as its whole final answer in issue 19's trial."""

AFTER_A_TOOL = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1"},
]
"""A conversation after one tool round trip, in the engine's message shape."""


def scripted_engine(tokenizer, answer: str, **engine_options) -> GuideEngine:
    """An engine on a tiny random llama whose logits favour ``answer``'s tokens, then end-of-sequence.

    The bias is large, so greedy and sampled decoding write ``answer`` exactly, unless a grammar
    forbids a token (it then picks among the allowed ones as any model would). Step ``k`` is read
    from the attention mask's width, so every request on the engine starts the script anew.
    """
    script = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    torch.manual_seed(0)
    model = tiny_model("llama")
    forward, prompt_width = model.forward, {}

    @functools.wraps(forward)  # the same signature: the engine reads the cache keyword from it
    def scripted(*args, **kwargs):
        out = forward(*args, **kwargs)
        mask = kwargs["attention_mask"]  # (batch, prompt + generated so far)
        if kwargs["input_ids"].shape[1] > 1:  # the prefill
            prompt_width["width"] = mask.shape[1]
        step = mask.shape[1] - prompt_width["width"]
        out.logits[:, -1, script[min(step, len(script) - 1)]] += 1e4
        return out

    model.forward = scripted
    return GuideEngine(model, tokenizer, **engine_options)
