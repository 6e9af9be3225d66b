"""GUIDE in bfloat16 and float16 on CPU, against the dense reference, with tolerances that say why.

A low-precision forward differs from the float32 truth by rounding, whatever the attention does.
So the bar is relative to stock attention in the same dtype: **GUIDE in a dtype is at most
``SLACK`` times as far from the float32 reference as the dense reference in that dtype is** (plus
a small floor for positions where that one happens to be exact). The extra coordinate adds one
rounding of ``Δ / scale`` (relative 2⁻⁸ in bfloat16, 2⁻¹¹ in float16) to each biased logit, the
same order as the rounding of every ``q·k``, hence a slack of 2 rather than an absolute number
that would depend on the model's scale.

Influence accumulates in float32 (its I vector, norms and products), so its error is the
kernel's rounding of Ā·I: ≤ 2 % absolute on values in [0, 1] (bfloat16 keeps 8 bits).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from guide_engine import GuideEngine
from guide_engine.attention import MAX_ABS_BIAS, GuideAttentionState
from guide_engine.kv_cache import cache_keyword
from tests.reference import REFERENCE, Recorder, reference_influence, twin

SLACK = 2.0
FLOOR = {torch.bfloat16: 2e-3, torch.float16: 3e-4}  # about 2⁻⁹ and 2⁻¹² of these logits (|l| ≲ 1)
DTYPES = [torch.bfloat16, torch.float16]
PROMPT = "Translate this. <?-> Answer in French. <-?> <!!-> Be brief. <-!!> What is the capital of Italy?"


def _ids(length: int = 24) -> torch.Tensor:
    return torch.randint(3, 1000, (1, length), generator=torch.Generator().manual_seed(4))


def _bias(length: int = 24) -> torch.Tensor:
    bias = torch.zeros(1, length)
    bias[0, 3:8], bias[0, 12:15] = 2.0, -1.5
    return bias


def _within_rounding(got: torch.Tensor, truth: torch.Tensor, stock: torch.Tensor, dtype: torch.dtype, what: str):
    """``got`` (GUIDE in ``dtype``) is within SLACK × the error of ``stock`` (reference in ``dtype``) from ``truth``."""
    error = (got.double() - truth.double()).abs().max().item()
    stock_error = (stock.double() - truth.double()).abs().max().item()
    assert torch.isfinite(got).all(), what
    assert error <= SLACK * stock_error + FLOOR[dtype], f"{what}: {error:.3g} vs the reference's {stock_error:.3g}"


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The same weights in ``dtype``, with the "guide" attention."""
    low = twin(model, REFERENCE).to(dtype)
    low.set_attn_implementation("guide")
    return low


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@torch.no_grad()
def test_low_precision_prefill_and_decoding_match_the_reference(tiny, dtype):
    ids, bias = _ids(), _bias()
    truth_model = twin(tiny, REFERENCE)
    guided, reference = _cast(tiny, dtype), twin(tiny, REFERENCE).to(dtype)
    state = GuideAttentionState(key_bias=bias)
    cache = DynamicCache(config=guided.config)
    out = guided(input_ids=ids, use_cache=True, guide=state, **{cache_keyword(guided): cache})
    truth = truth_model(ids, reference=Recorder(bias)).logits
    _within_rounding(out.logits, truth, reference(ids, reference=Recorder(bias)).logits, dtype, "prefill")
    plain = guided(ids).logits
    assert (out.logits.double() - plain.double()).abs().max() > 10 * FLOOR[dtype], "Δ must show above rounding"
    sequence = ids
    for step in range(6):
        next_id = truth[:, -1:].argmax(-1)
        sequence = torch.cat([sequence, next_id], dim=-1)
        position = torch.tensor([[sequence.shape[1] - 1]])
        kwargs = {cache_keyword(guided): cache, "position_ids": position, "use_cache": True, "guide": state}
        step_logits = guided(input_ids=next_id, **kwargs).logits[:, -1]
        truth = truth_model(sequence, reference=Recorder(bias)).logits
        stock = reference(sequence, reference=Recorder(bias)).logits[:, -1]
        _within_rounding(step_logits, truth[:, -1], stock, dtype, f"decoding step {step}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@torch.no_grad()
def test_the_largest_delta_stays_finite_and_saturates(tiny, dtype):
    """|Δ| is clamped to MAX_ABS_BIAS; Δ / scale then fits float16 (1000·√d ≪ 65504) and masks like −∞."""
    ids = _ids()
    bias = torch.zeros(1, ids.shape[1])
    bias[0, 5:9] = -1e9
    guided = _cast(tiny, dtype)
    assert torch.finfo(torch.float16).max > MAX_ABS_BIAS * 256**0.5
    clamped = bias.clamp(-MAX_ABS_BIAS, MAX_ABS_BIAS)  # as build_state clamps every request's Δ
    out = guided(ids, guide=GuideAttentionState(key_bias=clamped)).logits
    assert torch.isfinite(out).all()
    truth = twin(tiny, REFERENCE)(ids, reference=Recorder(clamped)).logits
    stock = twin(tiny, REFERENCE).to(dtype)(ids, reference=Recorder(clamped)).logits
    _within_rounding(out, truth, stock, dtype, "Δ = −∞ clamped")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_low_precision_influence_matches_the_reference(tiny, smol_tokenizer, dtype):
    engine = GuideEngine(_cast(tiny, dtype), smol_tokenizer, delta_mid=2.0)
    result = engine.generate(PROMPT, max_new_tokens=4, metric="influence")
    encoded = engine.encode(PROMPT)
    ids = torch.tensor([encoded.input_ids + result.token_ids])
    indicator = torch.tensor([encoded.influence_mask + [False] * len(result.token_ids)], dtype=torch.float64)
    expected = reference_influence(
        twin(tiny, REFERENCE), ids, indicator, torch.tensor([encoded.token_deltas]), "influence"
    )
    for layer, values in expected.items():
        got = result.influence[layer]
        assert got.dtype == torch.float32, "Influence accumulates in float32"
        torch.testing.assert_close(got.double(), values, atol=2e-2, rtol=0, msg=f"layer {layer}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_low_precision_contrast_is_its_definition(tiny, smol_tokenizer, dtype):
    """With γ, the first token comes from l_Δ + γ (l_Δ − l_0), both computed by this dtype's model."""
    engine = GuideEngine(_cast(tiny, dtype), smol_tokenizer, delta_mid=3.0)
    prompt = "<!!-> Answer in French. <-!!> What is the capital of Italy?"
    encoded = engine.encode(prompt)
    ids, bias = torch.tensor([encoded.input_ids]), torch.tensor([encoded.token_deltas])
    with torch.no_grad():
        emphasized = engine.model(ids, guide=GuideAttentionState(key_bias=bias)).logits[0, -1].float()
        plain = engine.model(ids).logits[0, -1].float()
    expected = int((emphasized + 4.0 * (emphasized - plain)).argmax())
    assert engine.generate(prompt, max_new_tokens=1, contrast=4.0).token_ids[0] == expected
