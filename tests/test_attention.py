"""The "guide" attention against stock SDPA and a dense-mask eager reference, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from guide_engine import attention
from guide_engine.attention import GuideAttentionState, kernel_head_dim
from guide_engine.kv_cache import cache_keyword
from tests.reference import REFERENCE, Recorder, assert_cached_decoding_matches, twin

SEQ = 20
TOL = dict(atol=1e-5, rtol=1e-5)


def _ids(seed: int = 1, length: int = SEQ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 1000, (1, length), generator=g)


def _bias(length: int = SEQ, spans=((3, 7, 2.0), (11, 14, -1.0))) -> torch.Tensor:
    bias = torch.zeros(1, length)
    for start, end, delta in spans:
        bias[0, start:end] = delta
    return bias


@torch.no_grad()
def test_no_state_is_exactly_stock_sdpa(tiny):
    ids = _ids()
    stock = twin(tiny, "sdpa")
    assert torch.equal(tiny(ids).logits, stock(ids).logits)


@torch.no_grad()
def test_zero_delta_equals_stock_sdpa(tiny):
    ids = _ids()
    stock = twin(tiny, "sdpa")(ids).logits
    guided = tiny(ids, guide=GuideAttentionState(key_bias=torch.zeros(1, SEQ))).logits
    torch.testing.assert_close(guided, stock, **TOL)


@torch.no_grad()
def test_prefill_matches_dense_reference(tiny):
    ids, bias = _ids(), _bias()
    reference = twin(tiny, REFERENCE)(ids, reference=Recorder(bias)).logits
    guided = tiny(ids, guide=GuideAttentionState(key_bias=bias)).logits
    plain = tiny(ids).logits
    torch.testing.assert_close(guided, reference, **TOL)
    assert not torch.allclose(guided, plain, atol=1e-3), "the bias must change the logits"


@pytest.mark.parametrize("layers,heads", [({0}, None), ({0, 2}, None), (None, (1, 2)), ({1}, (0,))])
@torch.no_grad()
def test_layer_and_head_selection_match_reference(tiny, layers, heads):
    ids, bias = _ids(), _bias()
    reference = twin(tiny, REFERENCE)(ids, reference=Recorder(bias, layers=layers, heads=heads)).logits
    state = GuideAttentionState(key_bias=bias, layers=frozenset(layers) if layers else None, heads=heads)
    torch.testing.assert_close(tiny(ids, guide=state).logits, reference, **TOL)


@torch.no_grad()
def test_cached_decoding_matches_full_recompute(tiny):
    """Prefill a prompt, decode 12 tokens one by one: every step equals the reference on the whole sequence.

    12 steps go past Gemma 3's sliding window (6), so keys leave the window while biased.
    """
    prompt, bias = _ids(length=12), _bias(length=12, spans=((2, 5, 3.0), (8, 10, 1.5)))
    reference_model = twin(tiny, REFERENCE)
    state = GuideAttentionState(key_bias=bias)
    cache = DynamicCache(config=tiny.config)
    out = tiny(input_ids=prompt, **{cache_keyword(tiny): cache}, use_cache=True, guide=state)
    assert_cached_decoding_matches(tiny, reference_model, out, cache, prompt, state, Recorder(bias), 12, TOL)


@torch.no_grad()
def test_padded_batch_rows_match_reference(tiny):
    """Two left-padded rows with different spans; each row equals its own unpadded reference."""
    short, long_ = _ids(2, 9), _ids(3, 14)
    bias_short = _bias(9, ((1, 4, 2.0),))
    bias_long = _bias(14, ((6, 12, -2.0),))
    ids = torch.cat([torch.cat([torch.full((1, 5), 2), short], 1), long_])
    mask = torch.tensor([[0] * 5 + [1] * 9, [1] * 14])
    bias = torch.cat([torch.cat([torch.zeros(1, 5), bias_short], 1), bias_long])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    state = GuideAttentionState(key_bias=bias, pad_offsets=torch.tensor([5, 0]))
    batch = tiny(input_ids=ids, attention_mask=mask, position_ids=position_ids, guide=state).logits
    reference_model = twin(tiny, REFERENCE)
    alone_short = reference_model(short, reference=Recorder(bias_short)).logits
    alone_long = reference_model(long_, reference=Recorder(bias_long)).logits
    torch.testing.assert_close(batch[0, 5:], alone_short[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch[1], alone_long[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("heads", [None, (1, 2)])
@torch.no_grad()
def test_padded_decoding_steps_match_reference(tiny, heads):
    """Decoding steps of a left-padded batch (the additive row through SDPA's ``position_bias``, merged
    with the boolean padding mask; with two query heads of different key-value groups, packed for
    grouped-query attention): each row equals the dense reference on its own unpadded sequence."""
    rows = [_ids(2, 9), _ids(3, 14)]
    biases = [_bias(9, ((1, 4, 2.0),)), _bias(14, ((6, 12, -2.0),))]
    ids = torch.cat([torch.cat([torch.full((1, 5), 2), rows[0]], 1), rows[1]])
    mask = torch.tensor([[0] * 5 + [1] * 9, [1] * 14])
    bias = torch.cat([torch.cat([torch.zeros(1, 5), biases[0]], 1), biases[1]])
    state = GuideAttentionState(key_bias=bias, heads=heads, pad_offsets=torch.tensor([5, 0]))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=tiny.config)
    out = tiny(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, guide=state, use_cache=True,
        **{cache_keyword(tiny): cache},
    )  # fmt: skip
    reference_model = twin(tiny, REFERENCE)
    for step in range(8):  # past Gemma 3's sliding window (6)
        next_ids = out.logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
        rows = [torch.cat([row, next_ids[i : i + 1]], dim=-1) for i, row in enumerate(rows)]
        mask = torch.cat([mask, mask.new_ones(2, 1)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
        out = tiny(
            input_ids=next_ids, attention_mask=mask, position_ids=position_ids, guide=state, use_cache=True,
            **{cache_keyword(tiny): cache},
        )  # fmt: skip
        for i, (row, row_bias) in enumerate(zip(rows, biases)):
            full = reference_model(row, reference=Recorder(row_bias, heads=heads)).logits[0, -1]
            torch.testing.assert_close(out.logits[i, -1], full, atol=1e-4, rtol=1e-4, msg=f"row {i}, step {step}")
    plain = reference_model(rows[1]).logits[0, -1]
    assert not torch.allclose(out.logits[1, -1], plain, atol=1e-3), "the bias must change the decoded logits"


# ------------------------------------------------------------------ the width the fused kernels take


@pytest.mark.parametrize(
    "head_dim,device,dtype,width",
    [
        # CUDA, half precision: a multiple of 8 (memory-efficient's alignment, flash's too).
        (64, "cuda", torch.bfloat16, 72),
        (128, "cuda", torch.float16, 136),
        (256, "cuda", torch.bfloat16, 264),  # past flash's 256, still memory-efficient
        (80, "cuda", torch.bfloat16, 88),
        (7, "cuda", torch.float16, 8),
        # CUDA, float32: a multiple of 4.
        (64, "cuda", torch.float32, 68),
        (128, "cuda", torch.float32, 132),
        (255, "cuda", torch.float32, 256),
        # CPU (and any other device): head_dim + 1, measured as fast as padding there.
        (64, "cpu", torch.float32, 65),
        (128, "cpu", torch.bfloat16, 129),
        (64, "mps", torch.float16, 65),
    ],
)
def test_kernel_head_dim_follows_the_dispatcher(head_dim, device, dtype, width):
    assert kernel_head_dim(head_dim, device, dtype) == width


@pytest.mark.parametrize("head_dim", [1, 63, 64, 65, 96, 127, 128, 200, 255, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kernel_head_dim_is_the_smallest_aligned_width(head_dim, dtype):
    width = kernel_head_dim(head_dim, "cuda", dtype)
    alignment = 4 if dtype == torch.float32 else 8
    assert width > head_dim and width % alignment == 0 and width - alignment <= head_dim


@pytest.fixture
def padded_like_cuda(monkeypatch):
    """Force CUDA's bf16 padding (a multiple of 8) on this CPU, so q′, k′, v′ carry zero columns."""
    real = attention.kernel_head_dim
    widths = []

    def cuda_width(head_dim, device_type, dtype):
        widths.append(real(head_dim, "cuda", torch.bfloat16))
        return widths[-1]

    monkeypatch.setattr(attention, "kernel_head_dim", cuda_width)
    return widths


@torch.no_grad()
def test_forced_padding_prefill_and_decoding_match_reference(tiny, padded_like_cuda):
    prompt, bias = _ids(length=12), _bias(length=12, spans=((2, 5, 3.0), (8, 10, 1.5)))
    state = GuideAttentionState(key_bias=bias)
    cache = DynamicCache(config=tiny.config)
    out = tiny(input_ids=prompt, use_cache=True, guide=state, **{cache_keyword(tiny): cache})
    head_dim = tiny.config.head_dim if getattr(tiny.config, "head_dim", None) else 8
    assert padded_like_cuda and all(w % 8 == 0 and w > head_dim for w in padded_like_cuda)
    reference_model = twin(tiny, REFERENCE)
    torch.testing.assert_close(out.logits, reference_model(prompt, reference=Recorder(bias)).logits, **TOL)
    assert_cached_decoding_matches(tiny, reference_model, out, cache, prompt, state, Recorder(bias), 8, TOL)


@torch.no_grad()
def test_forced_padding_equals_unpadded(tiny, monkeypatch):
    ids, bias = _ids(), _bias()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a padded row: the masked (memory-efficient) path on CUDA
    state = GuideAttentionState(key_bias=bias, pad_offsets=torch.tensor([3]))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    unpadded = tiny(input_ids=ids, attention_mask=mask, position_ids=position_ids, guide=state).logits
    monkeypatch.setattr(attention, "kernel_head_dim", lambda d, device, dtype: d + 13)
    padded = tiny(input_ids=ids, attention_mask=mask, position_ids=position_ids, guide=state).logits
    torch.testing.assert_close(padded[0, 3:], unpadded[0, 3:], **TOL)


@torch.no_grad()
def test_forced_padding_keeps_the_influence_column(tiny, monkeypatch):
    """The Influence vector rides in v′'s extra column; zero columns after it change nothing."""
    from guide_engine.influence import InfluenceTracker, attach_hooks

    ids, bias = _ids(), _bias()
    indicator = torch.zeros(1, SEQ)
    indicator[0, 3:7] = 1
    hooks = attach_hooks(tiny)
    measured = []
    try:
        for width in (kernel_head_dim, lambda d, device, dtype: kernel_head_dim(d, "cuda", torch.bfloat16)):
            monkeypatch.setattr(attention, "kernel_head_dim", width)
            tracker = InfluenceTracker(indicator, "influence")
            tiny(input_ids=ids, use_cache=False, guide=GuideAttentionState(key_bias=bias, influence=tracker))
            measured.append(tracker.layers)
    finally:
        if hooks is not None:
            hooks.release()
    unpadded, padded = measured
    assert sorted(padded) == sorted(unpadded) and len(unpadded) > 1
    for layer, values in unpadded.items():
        torch.testing.assert_close(padded[layer], values, **TOL, msg=f"layer {layer}")
