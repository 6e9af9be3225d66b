"""Constrained decoding (JSON schema / JSON mode), repetition penalty and timeout, on tiny random models.

A random model is the hardest case for a grammar: it has no idea what JSON is, so everything that
parses here was made to parse by the token mask.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from guide_engine import GenerationTimeoutError, GuideEngine, GuideError, GuideValueError, MissingDependencyError
from guide_engine.constraints import GrammarCompiler, TokenMasks, json_schema_grammar
from guide_engine.decoding import decode_steps, left_pad
from guide_engine.options import SamplingConfig
from tests.reference import tiny_model
from tests.schema_check import errors

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
}
NESTED = {
    "type": "object",
    "properties": {
        "user": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 9999},
                "role": {"enum": ["admin", "editor", "viewer"]},
            },
            "required": ["id", "role"],
        },
        "active": {"type": "boolean"},
    },
    "required": ["user", "active"],
}
LISTS = {
    "type": "object",
    "properties": {
        "scores": {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "maxItems": 4},
        "labels": {
            "type": "array",
            "items": {"type": "string", "enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["scores", "labels"],
}
ENUM_ONLY = {"enum": ["yes", "no", "maybe"]}
SCHEMAS = {"person": PERSON, "nested": NESTED, "lists": LISTS, "enum": ENUM_ONLY}


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.fixture(scope="module")
def engine(smol_tokenizer):
    torch.manual_seed(0)
    return GuideEngine(tiny_model("llama"), smol_tokenizer, delta_mid=3.0)


# ------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_a_random_model_under_a_schema_always_produces_valid_json(engine, name):
    schema = SCHEMAS[name]
    for seed in range(3):
        result = engine.generate(
            "Describe it.", response_format=json_format(schema), max_new_tokens=80, temperature=1.0, seed=seed
        )
        assert result.finish_reason == "stop", (seed, result.text)
        assert result.token_ids[-1] in engine.eos_ids  # a finished grammar ends with end-of-sequence
        value = json.loads(result.text)
        assert result.parsed == value
        assert errors(value, schema) == [], (seed, result.text)


def test_greedy_json_object_mode_gives_an_object(engine):
    result = engine.generate("Anything.", response_format={"type": "json_object"}, max_new_tokens=24)
    unconstrained = engine.generate("Anything.", max_new_tokens=24)
    assert result.text.startswith("{") and not unconstrained.text.startswith("{")
    if result.finish_reason == "stop":
        assert isinstance(result.parsed, dict)
    else:  # cut short: no parsed value, never a wrong one
        assert result.parsed is None


def test_text_response_format_is_unconstrained(engine):
    plain = engine.generate("Hello", max_new_tokens=8)
    text = engine.generate("Hello", max_new_tokens=8, response_format={"type": "text"})
    assert text.token_ids == plain.token_ids and text.parsed is None


def test_emphasis_and_grammar_combine(engine):
    fmt = json_format(PERSON)
    plain = engine.generate("Tell me about Ann.", response_format=fmt, max_new_tokens=60)
    zero = engine.generate("Tell me about <!!->Ann<-!!>.", response_format=fmt, max_new_tokens=60, delta_mid=0.0)
    strong = engine.generate(
        "<!!!->Tell me about Ann.<-!!!>", response_format=fmt, max_new_tokens=60, delta_mid=8.0, seed=0
    )
    assert zero.token_ids == plain.token_ids  # tags at Δ = 0 change nothing, grammar or not
    assert strong.token_ids != plain.token_ids  # Δ still steers inside the grammar
    for result in (plain, strong):
        assert result.finish_reason == "stop" and errors(json.loads(result.text), PERSON) == []
    assert strong.spans and strong.spans[0].delta == 16.0


def test_batch_rows_each_follow_the_grammar_and_equal_one_by_one(engine):
    prompts = ["A.", "A much longer prompt, so this row is padded less than the first one."]
    fmt = json_format(NESTED)
    batch = engine.generate_batch(prompts, response_format=fmt, max_new_tokens=60)
    for prompt, row in zip(prompts, batch):
        alone = engine.generate(prompt, response_format=fmt, max_new_tokens=60)
        assert row.token_ids == alone.token_ids
        assert errors(json.loads(row.text), NESTED) == []


def test_rows_follow_their_own_grammars_and_a_row_without_one_is_unmasked(engine, smol_tokenizer):
    """decode_steps with three rows: schema A, no grammar, schema B."""
    compiler = engine.grammars
    rows = [smol_tokenizer("Once upon")["input_ids"]] * 3
    ids, mask = left_pad(rows, engine.pad_id, torch.device("cpu"))
    masks = compiler.masks(
        [compiler.matcher(json_schema_grammar(PERSON)), None, compiler.matcher(json_schema_grammar(LISTS))]
    )
    greedy = SamplingConfig()
    done = torch.zeros(3, dtype=torch.bool)
    out: list[list[int]] = [[], [], []]
    for step in decode_steps(engine.model, ids, mask, None, greedy, 60, engine.pad_id, done, grammar_masks=masks):
        for row, token in enumerate(step.tolist()):
            if not done[row]:
                out[row].append(token)
                done[row] = token in engine.eos_ids
    free = [int(t) for t in decode_steps(engine.model, ids[:1], mask[:1], None, greedy, len(out[1]), engine.pad_id)]
    assert out[1] == free  # the unconstrained row is exactly what decoding without masks gives
    for row, schema in ((0, PERSON), (2, LISTS)):
        text = smol_tokenizer.decode(out[row], skip_special_tokens=True)
        assert out[row][-1] in engine.eos_ids and errors(json.loads(text), schema) == [], text


def test_logits_wider_than_the_vocabulary_are_masked_beyond_it(engine):
    compiler = engine.grammars
    matcher = compiler.matcher(json_schema_grammar(ENUM_ONLY))
    vocab = compiler.lltokenizer().vocab_size
    masks = TokenMasks([matcher, None], vocab, sorted(engine.eos_ids))
    logits = torch.zeros(2, vocab + 64)
    masks.apply(logits, torch.zeros(2, dtype=torch.bool))
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert allowed and all(t < vocab for t in allowed)
    assert all(engine.tokenizer.decode([t]).startswith('"') for t in allowed)  # every JSON string opens with '"'
    assert torch.isfinite(logits[1]).all()  # the row without a grammar is untouched


def test_stream_pieces_join_to_the_json_text(engine):
    stream = engine.stream("Go.", response_format=json_format(PERSON), max_new_tokens=60, temperature=1.0, seed=3)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text and stream.result.parsed == json.loads(stream.result.text)


def test_a_bad_schema_is_a_value_error_naming_it(engine):
    with pytest.raises(GuideValueError, match="response_format schema cannot be enforced.*bogus"):
        engine.generate("x", response_format=json_format({"type": "bogus"}), max_new_tokens=4)


def test_missing_llguidance_names_the_extra(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'guide-attention\[structured\]'"):
        GrammarCompiler(engine.tokenizer, [2]).lltokenizer()
    with pytest.raises(MissingDependencyError, match="structured"):
        engine.generate("x", response_format={"type": "json_object"}, max_new_tokens=4)
    assert engine.generate("x", max_new_tokens=2).completion_tokens >= 1  # plain requests never need it


# ---------------------------------------------------------------------------- repetition penalty


def test_repetition_penalty_equals_transformers_processor(engine, smol_tokenizer):
    ids = smol_tokenizer("the cat saw the cat and the", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = engine.model(ids).logits[:, -1, :].float()
    plain_first = int(logits.argmax())
    # put the unpenalized choice in the prompt, so the penalty must move the argmax away from it
    ids = torch.cat([ids, torch.tensor([[plain_first]])], dim=1)
    with torch.no_grad():
        logits = engine.model(ids).logits[:, -1, :].float()
    for penalty in (1.0, 1.3, 50.0):
        expected = int(RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone()).argmax())
        got = next(decode_steps(engine.model, ids, torch.ones_like(ids), None, SamplingConfig(), 1, engine.pad_id,
                                repetition_penalty=penalty))  # fmt: skip
        assert int(got[0]) == expected, penalty
    assert expected not in ids[0].tolist()  # at 50 the penalty did move it off every seen token


def test_repetition_penalty_ignores_padding_batch_equals_one_by_one(engine):
    prompts = ["Hi.", "A longer prompt that pads the first row with several pad tokens."]
    # below 1 the "penalty" favours seen tokens: a random model then repeats its prompt, so it acts
    batch = engine.generate_batch(prompts, max_new_tokens=10, repetition_penalty=0.2)
    for prompt, row in zip(prompts, batch):
        assert row.token_ids == engine.generate(prompt, max_new_tokens=10, repetition_penalty=0.2).token_ids
    assert batch[0].token_ids != engine.generate(prompts[0], max_new_tokens=10).token_ids  # the penalty acted


# ---------------------------------------------------------------------------------------- timeout


def test_timeout_raises_with_the_partial_result(engine):
    with pytest.raises(GenerationTimeoutError) as caught:
        engine.generate("Count to ten.", max_new_tokens=50, timeout=1e-9)
    error = caught.value
    assert isinstance(error, TimeoutError) and isinstance(error, GuideError)
    assert "timeout=1e-09" in str(error)
    partial = error.partial
    assert partial.finish_reason == "timeout" and 1 <= partial.completion_tokens < 50
    assert engine.generate("Count to ten.", max_new_tokens=3).completion_tokens == 3  # still usable


def test_timeout_in_a_stream_and_a_batch(engine):
    stream, pieces = engine.stream("Count.", max_new_tokens=50, timeout=1e-9), []
    with pytest.raises(GenerationTimeoutError) as caught:
        for piece in stream:
            pieces.append(piece)
    assert caught.value.partial.text.startswith("".join(pieces))
    assert caught.value.partial.finish_reason == "timeout"
    with pytest.raises(GenerationTimeoutError) as caught:
        engine.generate_batch(["a", "b"], max_new_tokens=50, timeout=1e-9)
    assert [r.finish_reason for r in caught.value.partial] == ["timeout", "timeout"]


def test_a_generous_timeout_changes_nothing(engine):
    assert (
        engine.generate("Hi", max_new_tokens=6, timeout=600).token_ids
        == engine.generate("Hi", max_new_tokens=6).token_ids
    )


# ------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"response_format": {"type": "xml"}}, "response_format must be None, .*json_schema.*'xml'"),
        ({"response_format": "json"}, "response_format must be"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "needs a 'schema' dict"),
        ({"repetition_penalty": 0}, "repetition_penalty must be > 0.*got 0"),
        ({"repetition_penalty": -1.5}, "repetition_penalty must be > 0"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number"),
        ({"repetition_penalty": "high"}, "repetition_penalty must be a finite number, got 'high'"),
        ({"timeout": 0}, "timeout must be > 0 .*seconds.*got 0"),
        ({"timeout": float("inf")}, "timeout must be a finite number"),
        ({"timeout": True}, "timeout must be a finite number, got True"),
    ],
)
def test_bad_values_raise_value_errors_naming_them(engine, options, message):
    with pytest.raises(GuideValueError, match=message):
        engine.generate("x", max_new_tokens=2, **options)
