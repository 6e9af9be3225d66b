"""Influence and rollout against a reference that materializes attention maps and hidden states."""

from __future__ import annotations

import json

import pytest
import torch

from guide_engine import AppliedSpan, GuideEngine, InfluenceResult
from guide_engine.attention import GuideAttentionState
from guide_engine.influence import InfluenceTracker, attach_hooks
from tests.reference import REFERENCE, reference_influence, twin

PROMPT = "Translate this. <?-> Answer in French. <-?> <!!-> Be brief. <-!!> What is the capital of Italy?"


def _assert_matches(result, expected, rtol=1e-4):
    assert sorted(result) == sorted(expected)
    for layer in expected:
        got, want = result[layer].double(), expected[layer]
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-7, msg=f"layer {layer}")


@pytest.mark.parametrize("metric", ["influence", "attention_rollout"])
@pytest.mark.parametrize("delta_influence", [0.0, 2.0])
def test_tiny_models_match_materialized_reference(tiny, smol_tokenizer, metric, delta_influence):
    engine = GuideEngine(tiny, smol_tokenizer, delta_mid=2.0)
    result = engine.generate(PROMPT, max_new_tokens=6, metric=metric, delta_influence=delta_influence)
    inf = result.influence
    encoded = engine.encode(PROMPT, delta_influence=delta_influence)
    ids = torch.tensor([encoded.input_ids + result.token_ids])
    indicator = torch.tensor([encoded.influence_mask + [False] * len(result.token_ids)], dtype=torch.float64)
    bias = torch.tensor([encoded.token_deltas])
    expected = reference_influence(twin(tiny, REFERENCE), ids, indicator, bias, metric)
    _assert_matches(inf, expected)
    assert inf.generation_start == result.prompt_tokens
    assert len(inf.tokens) == ids.shape[1] == inf[0].shape[0]


def test_influence_invariants(tiny, smol_tokenizer):
    engine = GuideEngine(tiny, smol_tokenizer)
    result = engine.generate(PROMPT, max_new_tokens=5, metric="influence")
    inf = result.influence
    span = next(s for s in inf.spans if s.kind == "influence")
    indicator = torch.zeros(len(inf.tokens))
    indicator[span.token_start : span.token_end] = 1
    assert torch.equal(inf[-1], indicator)
    assert sorted(inf) == list(range(-1, engine.num_layers))
    for layer, values in inf.items():
        assert values.min() >= 0 and values.max() <= 1, layer
        assert torch.count_nonzero(values[: span.token_start]) == 0, f"positions before the span, layer {layer}"
    assert inf.metric == "influence"


def test_one_forward_pass_for_the_whole_generation(tiny, smol_tokenizer):
    """Influence costs exactly one forward call beyond generation, whatever the length."""
    engine = GuideEngine(tiny, smol_tokenizer)
    calls = []
    handle = engine.model.register_forward_pre_hook(lambda m, a, k: calls.append(k.get("use_cache")), with_kwargs=True)
    try:
        plain = engine.generate(PROMPT, max_new_tokens=8)
        n_plain = len(calls)
        calls.clear()
        measured = engine.generate(PROMPT, max_new_tokens=8, metric="influence")
    finally:
        handle.remove()
    assert measured.token_ids == plain.token_ids
    assert len(calls) == n_plain + 1


def test_no_square_matrix_is_allocated(tiny, smol_tokenizer):
    """The attention product runs in the kernel: no float tensor of n × n elements is ever built.

    (Sliding-window layers get the boolean mask stock SDPA builds too; only scores would be float.)
    """
    engine = GuideEngine(tiny, smol_tokenizer)
    attach_hooks(engine.model)
    n = 300
    ids = torch.randint(3, 1000, (1, n))
    indicator = torch.zeros(1, n)
    indicator[0, 10:20] = 1
    tracker = InfluenceTracker(indicator, "influence")
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() >= n * n:
                seen.append((getattr(func, "__name__", str(func)), tuple(out.shape)))
            return out

    with torch.no_grad(), Spy():
        engine.model(input_ids=ids, use_cache=False, logits_to_keep=1, guide=GuideAttentionState(influence=tracker))
    assert len(tracker.layers) == engine.num_layers + 1
    assert not [s for s in seen if s[1][-2:] == (n, n)], seen


def test_to_dict_is_json_and_round_trips(tiny, smol_tokenizer):
    engine = GuideEngine(tiny, smol_tokenizer)
    inf = engine.generate(PROMPT, max_new_tokens=3, metric="attention_rollout").influence
    data = json.loads(json.dumps(inf.to_dict()))
    back = InfluenceResult.from_dict(data)
    assert back.tokens == inf.tokens and back.spans == inf.spans and back.metric == "attention_rollout"
    for layer in inf:
        torch.testing.assert_close(back[layer], inf[layer])


def test_batch_with_metric_measures_each_row(tiny, smol_tokenizer):
    engine = GuideEngine(tiny, smol_tokenizer)
    prompts = [PROMPT, "<?-> Short. <-?> Hello"]
    rows = engine.generate_batch(prompts, max_new_tokens=4, metric="influence")
    for prompt, row in zip(prompts, rows):
        alone = engine.generate(prompt, max_new_tokens=4, metric="influence")
        for layer in alone.influence:
            torch.testing.assert_close(row.influence[layer], alone.influence[layer])


@pytest.mark.real_model
@pytest.mark.parametrize("metric", ["influence", "attention_rollout"])
def test_embedded_model_matches_materialized_reference(real_engine, metric):
    result = real_engine.generate(PROMPT, max_new_tokens=8, metric=metric, delta_mid=2.0)
    encoded = real_engine.encode(PROMPT, delta_mid=2.0)
    ids = torch.tensor([encoded.input_ids + result.token_ids])
    indicator = torch.tensor([encoded.influence_mask + [False] * len(result.token_ids)], dtype=torch.float64)
    expected = reference_influence(
        twin(real_engine.model, REFERENCE), ids, indicator, torch.tensor([encoded.token_deltas]), metric
    )
    _assert_matches(result.influence, expected)


def test_repr_is_one_line_summary(tiny, smol_tokenizer):
    """repr names the metric, the span, the layers and the length; no tensor is printed."""
    engine = GuideEngine(tiny, smol_tokenizer)
    result = engine.generate(PROMPT, max_new_tokens=5, metric="influence")
    inf = result.influence
    span = next(s for s in inf.spans if s.kind == "influence")
    text = repr(inf)
    assert text == (
        f"InfluenceResult(metric='influence', span='Answer in French.' (tokens {span.token_start}:{span.token_end}), "
        f"layers=-1..{engine.num_layers - 1}, "
        f"tokens={len(inf.tokens)} ({result.prompt_tokens} prompt + {result.completion_tokens} generated), "
        "delta_influence=0)"
    )
    assert str(inf) == text
    assert "\n" not in text
    assert "tensor" not in text


def test_repr_shortens_a_long_span_and_names_missing_layers():
    span = AppliedSpan("influence", 0, 0.0, "word " * 200, 0, 2, 402)
    layers = {k: torch.zeros(500) for k in (-1, 0, 5, 31)}
    inf = InfluenceResult(layers, ["x"] * 500, (span,), 450, "attention_rollout", 1.5)
    text = repr(inf)
    assert text == (
        "InfluenceResult(metric='attention_rollout', span='word word word word word word word word…' "
        "(tokens 2:402), layers=-1,0,5,31, tokens=500 (450 prompt + 50 generated), delta_influence=1.5)"
    )
