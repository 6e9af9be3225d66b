"""Where Δ applies (``delta_queries``) and contrastive emphasis (``contrast``), against references.

The references share no code with the engine: the dense-bias eager attention of ``tests/reference.py``
(with its ``rows_from`` for output-only queries), full recomputation at every step, and for
``contrast`` two models — the emphasized reference and stock SDPA — combined by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from guide_engine import GuideEngine, GuideValueError, decoding
from guide_engine.attention import GuideAttentionState
from guide_engine.decoding import contrast_of, emphasis_distance
from guide_engine.kv_cache import cache_keyword
from guide_engine.options import AUTO_CONTRAST, AUTO_MASKED_CONTRAST
from tests.reference import REFERENCE, Recorder, assert_cached_decoding_matches, twin

PROMPT = "<!!-> Answer in French. <-!!> What is the capital of Italy?"
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def engine(tiny, smol_tokenizer):
    return GuideEngine(tiny, smol_tokenizer, delta_mid=3.0)


def _prompt(engine: GuideEngine, text: str = PROMPT) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = engine.encode(text)
    return torch.tensor([encoded.input_ids]), torch.tensor([encoded.token_deltas])


@torch.no_grad()
def _reference_tokens(
    engine: GuideEngine,
    steps: int,
    *,
    rows_from=None,
    contrast: float = 0.0,
    masked: bool = False,
    alpha: float = 0.0,
    text: str = PROMPT,
) -> list[int]:
    """Greedy tokens by full recomputation: Δ on the prompt's keys (from ``rows_from`` on, if given).

    ``contrast`` pushes away from stock SDPA, or with ``masked`` from the prompt whose emphasized
    keys get −1000 (hidden); ``alpha`` keeps the pick among tokens with p_Δ ≥ α · max p_Δ.
    """
    ids, bias = _prompt(engine, text)
    emphasized, plain = twin(engine.model, REFERENCE), twin(engine.model, "sdpa")
    hidden = torch.where(bias > 0, -1000.0, 0.0)
    out: list[int] = []
    for _ in range(steps):
        logits = emphasized(ids, reference=Recorder(bias, rows_from=rows_from)).logits[0, -1]
        if contrast:
            width = hidden.shape[1]
            if masked:
                grown = torch.cat([hidden, torch.zeros(1, ids.shape[1] - width)], dim=-1)
                base = emphasized(ids, reference=Recorder(grown, rows_from=rows_from)).logits[0, -1]
            else:
                base = plain(ids).logits[0, -1]
            combined = logits + contrast * (logits - base)
            probs = logits.softmax(-1)
            keep = probs >= alpha * probs.max() if alpha else torch.ones_like(probs, dtype=torch.bool)
            logits = torch.where(keep, combined, logits - 1e4)
        token = int(logits.argmax())
        if token in engine.eos_ids:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=-1)
    return out


# ------------------------------------------------------------------------------- delta_queries


@torch.no_grad()
def test_output_queries_match_the_reference_in_prefill_and_cached_decoding(tiny):
    """Only the last prompt query and each new query get Δ; every cached step equals a full recompute."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 1000, (1, 12), generator=g)
    bias = torch.zeros(1, 12)
    bias[0, 2:5], bias[0, 8:10] = 3.0, -2.0
    reference_model = twin(tiny, REFERENCE)
    state = GuideAttentionState(key_bias=bias, query_from=11)
    cache = DynamicCache(config=tiny.config)
    out = tiny(input_ids=prompt, **{cache_keyword(tiny): cache}, use_cache=True, guide=state)
    expected = reference_model(prompt, reference=Recorder(bias, rows_from=11)).logits
    torch.testing.assert_close(out.logits, expected, **TOL)
    every_query = reference_model(prompt, reference=Recorder(bias)).logits
    assert not torch.allclose(out.logits[:, -1], every_query[:, -1], atol=1e-3), "output-only must differ from all"
    torch.testing.assert_close(out.logits[:, :-1], tiny(prompt).logits[:, :-1], **TOL)  # earlier rows: plain
    recorder = Recorder(bias, rows_from=11)
    assert_cached_decoding_matches(tiny, reference_model, out, cache, prompt, state, recorder, 8, TOL)


def test_engine_output_queries_equal_the_reference_loop(engine):
    ids, _ = _prompt(engine)
    expected = _reference_tokens(engine, 10, rows_from=ids.shape[1] - 1)
    assert engine.generate(PROMPT, max_new_tokens=10, delta_queries="output").token_ids == expected


def test_output_queries_in_a_padded_batch_equal_each_row_alone(engine):
    prompts = [PROMPT, "<!-> Be brief. <-!> Name three colors of the rainbow, please, in order."]
    batch = engine.generate_batch(prompts, max_new_tokens=8, delta_queries="output")
    assert [r.token_ids for r in batch] == [
        engine.generate(p, max_new_tokens=8, delta_queries="output").token_ids for p in prompts
    ]


# ------------------------------------------------------------------------------------ contrast


@pytest.mark.parametrize("gamma", [1.0, 4.0])
def test_contrast_equals_the_two_model_reference(engine, gamma):
    expected = _reference_tokens(engine, 10, contrast=gamma)
    result = engine.generate(PROMPT, max_new_tokens=10, contrast=gamma)
    assert result.token_ids == expected
    assert expected != _reference_tokens(engine, 10), "contrast must change this model's greedy tokens"


def test_contrast_without_tags_or_at_zero_is_plain_generation(engine):
    untagged = "Answer in French. What is the capital of Italy?"
    assert engine.generate(untagged, max_new_tokens=8, contrast=3.0).token_ids == (
        engine.generate(untagged, max_new_tokens=8).token_ids
    )
    assert engine.generate(PROMPT, max_new_tokens=8, contrast=0).token_ids == (
        engine.generate(PROMPT, max_new_tokens=8).token_ids
    )


def test_contrast_batches_streams_and_combines_with_output_queries(engine):
    prompts = [PROMPT, "Plain row. <!!!-> Count slowly. <-!!!> One, two"]
    batch = engine.generate_batch(prompts, max_new_tokens=8, contrast=2.0)
    alone = [engine.generate(p, max_new_tokens=8, contrast=2.0) for p in prompts]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    stream = engine.stream(PROMPT, max_new_tokens=8, contrast=2.0)
    assert "".join(stream) == alone[0].text
    ids, _ = _prompt(engine)
    both = engine.generate(PROMPT, max_new_tokens=6, contrast=2.0, delta_queries="output")
    assert both.token_ids == _reference_tokens(engine, 6, rows_from=ids.shape[1] - 1, contrast=2.0)


def test_contrast_keeps_stop_strings_constraints_and_influence(engine):
    result = engine.generate(PROMPT, max_new_tokens=24, contrast=2.0, response_format={"type": "json_object"})
    assert result.text.startswith("{")  # the grammar masks the combined logits
    if result.finish_reason != "length":
        assert isinstance(json.loads(result.text), dict)
    full = engine.generate(PROMPT, max_new_tokens=12, contrast=2.0)
    stop = full.text[3:6]
    if stop.strip():
        cut = engine.generate(PROMPT, max_new_tokens=12, contrast=2.0, stop=[stop])
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    measured = engine.generate(
        "<?-> Answer in French. <-?> <!!-> What is the capital? <-!!>",
        max_new_tokens=6,
        contrast=2.0,
        metric="influence",
    )
    influence = measured.influence
    assert influence is not None and influence.generation_start == measured.prompt_tokens
    assert len(influence.tokens) == measured.prompt_tokens + len(measured.token_ids) == influence[0].shape[0]


def test_masked_contrast_equals_the_reference_without_the_span(engine):
    """The masked twin hides the emphasized keys; contrast then amplifies what the span adds."""
    expected = _reference_tokens(engine, 10, contrast=2.0, masked=True)
    result = engine.generate(PROMPT, max_new_tokens=10, contrast=2.0, contrast_reference="masked")
    assert result.token_ids == expected
    assert expected != _reference_tokens(engine, 10, contrast=2.0), "the reference must matter here"


def test_plausibility_keeps_contrast_among_the_emphasized_model_s_likely_tokens(engine, monkeypatch):
    monkeypatch.setattr(decoding, "AUTO_CONTRAST_DISTANCE", 0)
    monkeypatch.setattr(decoding, "AUTO_CONTRAST", 8.0)
    monkeypatch.setattr(decoding, "AUTO_PLAUSIBILITY", 0.9)  # a tiny random model's probabilities are flat
    expected = _reference_tokens(engine, 10, contrast=8.0, alpha=0.9)
    assert engine.generate(PROMPT, max_new_tokens=10, contrast="auto", contrast_reference="plain").token_ids == expected
    assert expected != _reference_tokens(engine, 10, contrast=8.0), "α must matter here"


def test_masked_and_plausible_contrast_batch_stream_and_follow_a_grammar(engine, monkeypatch):
    monkeypatch.setattr(decoding, "AUTO_CONTRAST_DISTANCE", 0)
    monkeypatch.setattr(decoding, "AUTO_PLAUSIBILITY", 0.05)
    options = {"contrast": "auto", "contrast_reference": "masked"}
    prompts = [PROMPT, "Plain row. <!!!-> Count slowly. <-!!!> One, two", "No tags at all, two"]
    batch = engine.generate_batch(prompts, max_new_tokens=8, **options)
    alone = [engine.generate(p, max_new_tokens=8, **options) for p in prompts]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    assert alone[2].token_ids == engine.generate(prompts[2], max_new_tokens=8).token_ids
    assert "".join(engine.stream(PROMPT, max_new_tokens=8, **options)) == alone[0].text
    shaped = engine.generate(PROMPT, max_new_tokens=16, response_format={"type": "json_object"}, **options)
    assert shaped.text.startswith("{")  # implausible tokens stay finite, so the grammar still has a choice


# ------------------------------------------------------------------------------- contrast="auto"

FILLER = " ".join(f"Line {i} of a report about harbours, ships and cargo." for i in range(8))
FAR = f"<!!-> Answer in French. <-!!> {FILLER} What is the capital of Italy?"
NEAR = f"{FILLER} <!!-> Answer in French. <-!!> What is the capital of Italy?"


@pytest.fixture
def short_auto_distance(monkeypatch):
    """The tiny models' context is 512 tokens: "far" starts at 64 tokens here (the rule is the same)."""
    monkeypatch.setattr(decoding, "AUTO_CONTRAST_DISTANCE", 64)


def test_emphasis_distance_counts_the_tokens_after_the_last_emphasized_one(engine, short_auto_distance):
    near, far = engine.encode(NEAR), engine.encode(FAR)
    assert emphasis_distance(far) >= 64 > emphasis_distance(near) > 0
    last = max(i for i, d in enumerate(near.token_deltas) if d)
    assert emphasis_distance(near) == len(near.input_ids) - 1 - last
    assert emphasis_distance(engine.encode("No tags here.")) is None
    assert emphasis_distance(engine.encode(FAR, delta_mid=0.0)) is None  # Δ = 0 is no emphasis
    assert [contrast_of(e, "auto") for e in (far, near)] == [AUTO_MASKED_CONTRAST, 0.0]  # masked by default
    assert [contrast_of(e, "auto", "plain") for e in (far, near)] == [AUTO_CONTRAST, 0.0]
    assert contrast_of(near, 2.5) == 2.5


@pytest.mark.parametrize(
    "reference,fixed",
    [
        (None, {"contrast": AUTO_MASKED_CONTRAST, "contrast_reference": "masked"}),
        ("plain", {"contrast": AUTO_CONTRAST}),
    ],
)
def test_auto_contrast_contrasts_exactly_the_rows_with_far_emphasis(
    engine, short_auto_distance, monkeypatch, reference, fixed
):
    """A far row is the fixed contrast auto stands for (masked γ = 1 unless the request names plain)."""
    auto = {"contrast": "auto", "contrast_reference": reference}
    batch = engine.generate_batch([FAR, NEAR], max_new_tokens=8, **auto)
    far_contrasted = engine.generate(FAR, max_new_tokens=8, **fixed)
    assert far_contrasted.token_ids != engine.generate(FAR, max_new_tokens=8).token_ids, "γ must matter here"
    assert batch[0].token_ids == far_contrasted.token_ids
    assert batch[1].token_ids == engine.generate(NEAR, max_new_tokens=8).token_ids
    assert "".join(engine.stream(FAR, max_new_tokens=8, **auto)) == far_contrasted.text


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "options,message",
    [
        ({"contrast": -1.0}, r"contrast must be >= 0 \(0 = off, e.g. 1 or 4\) or 'auto', got -1.0"),
        ({"contrast": "sometimes"}, r"contrast must be a number >= 0 or 'auto', got 'sometimes'"),
        ({"contrast": float("nan")}, "contrast must be a finite number"),
        ({"delta_queries": "first"}, r"delta_queries must be one of \('all', 'output'\), got 'first'"),
        (
            {"contrast_reference": "none"},
            r"contrast_reference must be one of \('plain', 'masked'\) \(what contrast pushes away from: the "
            r"prompt without Δ, or without the emphasized text\), got 'none'",
        ),
    ],
)
def test_bad_steering_options_are_named(engine, options, message):
    with pytest.raises(GuideValueError, match=message):
        engine.generate(PROMPT, max_new_tokens=2, **options)
    assert engine.generate(PROMPT, max_new_tokens=2).token_ids  # still usable
