"""GuideEngine end to end on tiny random models: decoding loop, batching, streaming, options, errors."""

from __future__ import annotations

import math

import pytest
import torch

from guide_engine import ContextLengthError, GuideEngine, GuideError, ModelNotSupportedError, TagError
from tests.reference import twin

PROMPT = "<!!-> Answer in French. <-!!> What is the capital of Italy?"
UNTAGGED = "Answer in French. What is the capital of Italy?"


@pytest.fixture
def engine(tiny, smol_tokenizer):
    return GuideEngine(tiny, smol_tokenizer, delta_mid=3.0)


def test_untagged_greedy_equals_transformers_generate(engine, smol_tokenizer):
    """The decoding loop, without tags, gives exactly the tokens of stock `generate` on SDPA."""
    stock = twin(engine.model, "sdpa")
    ids = smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": UNTAGGED}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    expected = stock.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    result = engine.generate(UNTAGGED, max_new_tokens=12)
    assert result.token_ids == expected.tolist()
    assert result.prompt_tokens == ids.shape[1]


def test_tags_never_change_token_ids(engine, smol_tokenizer):
    tagged = engine.encode([{"role": "system", "content": "<!-> Be brief. <-!>"}, {"role": "user", "content": PROMPT}])
    plain = smol_tokenizer.apply_chat_template(
        [
            {"role": "system", "content": " Be brief. "},
            {"role": "user", "content": " Answer in French.  What is the capital of Italy?"},
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert tagged.input_ids == list(plain)
    assert [s.message_index for s in tagged.spans] == [0, 1]
    assert [s.delta for s in tagged.spans] == [1.5, 3.0]
    for span in tagged.spans:  # the span's tokens decode to its text
        decoded = engine.tokenizer.decode(tagged.input_ids[span.token_start : span.token_end])
        assert decoded.strip() == span.text.strip()


def test_emphasis_changes_logits_of_the_first_token(engine):
    with_tags = engine.generate(PROMPT, max_new_tokens=1, delta_mid=3.0)
    without = engine.generate(PROMPT, max_new_tokens=1, delta_mid=0.0)
    assert with_tags.spans[0].delta == 3.0 and without.spans[0].delta == 0.0
    # Δ = 0 is exactly the untagged prompt.
    assert (
        without.token_ids
        == engine.generate(" Answer in French.  What is the capital of Italy?", max_new_tokens=1).token_ids
    )


def test_batch_rows_equal_one_by_one(engine):
    prompts = [
        PROMPT,
        "<!!!-> Be short. <-!!!> Name three colours.",
        [
            {"role": "system", "content": "<!-> You like cats. <-!>"},
            {"role": "user", "content": "Hi! Tell me about dogs."},
        ],
        "No tags at all here.",
    ]
    batch = engine.generate_batch(prompts, max_new_tokens=10)
    for prompt, row in zip(prompts, batch):
        alone = engine.generate(prompt, max_new_tokens=10)
        assert row.token_ids == alone.token_ids
        assert row.spans == alone.spans
        assert row.prompt_tokens == alone.prompt_tokens


def test_stream_pieces_join_to_the_generated_text(engine):
    stream = engine.stream(PROMPT, max_new_tokens=15)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == engine.generate(PROMPT, max_new_tokens=15).text
    assert stream.result.completion_tokens == len(stream.result.token_ids)


def test_abandoned_stream_leaves_engine_usable(engine):
    expected = engine.generate(PROMPT, max_new_tokens=8)
    stream = engine.stream(PROMPT, max_new_tokens=50)
    next(stream)
    stream.close()
    assert engine.generate(PROMPT, max_new_tokens=8).token_ids == expected.token_ids


def test_stop_string_cuts_text_and_reports_stop(engine):
    full = engine.generate(PROMPT, max_new_tokens=20)
    assert full.finish_reason == "length" and len(full.text) > 4
    stop = full.text[3:5]
    cut = engine.generate(PROMPT, max_new_tokens=20, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    streamed = engine.stream(PROMPT, max_new_tokens=20, stop=stop)
    assert "".join(streamed) == cut.text


def test_sampling_is_reproducible_with_a_seed(engine):
    a = engine.generate(PROMPT, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    b = engine.generate(PROMPT, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize(
    "options,message",
    [
        ({"delta_mid": math.nan}, "delta_mid must be a finite number, got nan"),
        ({"delta_mid": "big"}, "delta_mid must be a finite number, got 'big'"),
        ({"delta_influence": math.inf}, "delta_influence must be a finite number, got inf"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
        ({"layers": [0, 99]}, r"layer 99 is out of range: this model has layers 0..\d"),
        ({"layers": "some"}, "layers must be 'all' or a list of layer indices, got 'some'"),
        ({"heads": [7]}, r"head 7 is out of range: this model has query heads 0..3"),
        ({"metric": "saliency"}, "metric must be one of .* got 'saliency'"),
        ({"metric": "influence"}, "needs an influence span"),
        ({"stop": [""]}, "stop must be a non-empty string"),
    ],
)
def test_bad_options_raise_clear_errors(engine, options, message):
    with pytest.raises(GuideError, match=message):
        engine.generate(PROMPT, **options)


@pytest.mark.parametrize(
    "prompt,message",
    [
        ("", "prompt is empty"),
        ([], "prompt must be a non-empty string or a non-empty list"),
        ([{"role": "user"}], "message 0 must be a mapping with 'role' and 'content'"),
        ([{"role": "user", "content": 3}], "message 0 content must be a string, got int"),
    ],
)
def test_bad_prompts_raise_clear_errors(engine, prompt, message):
    with pytest.raises(GuideError, match=message):
        engine.generate(prompt)


def test_malformed_tags_raise_tag_error(engine):
    with pytest.raises(TagError, match="<!->"):
        engine.generate("<!-> never closed")


def test_prompt_longer_than_context_names_both_lengths(engine):
    long_prompt = "word " * 600  # the tiny models have a 512-token context
    with pytest.raises(ContextLengthError, match=r"prompt has \d+ tokens but the model's context is 512 tokens"):
        engine.generate(long_prompt)
    assert engine.generate(PROMPT, max_new_tokens=2).completion_tokens >= 1  # still usable


def test_generation_stops_at_the_context_end(engine):
    prompt = "word " * 475  # about 506 tokens with the chat template
    result = engine.generate(prompt, max_new_tokens=100)
    assert result.prompt_tokens + result.completion_tokens <= 512
    assert result.finish_reason == "length"


def test_model_without_attention_interface_is_rejected(smol_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    class Legacy(torch.nn.Module):
        config = GPT2Config()

        def set_attn_implementation(self, name):
            raise AssertionError("must not be called")

        @classmethod
        def is_backend_compatible(cls):
            return False

    with pytest.raises(ModelNotSupportedError, match="Legacy does not route attention through"):
        GuideEngine(Legacy(), smol_tokenizer)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    if not gpt2.is_backend_compatible():
        with pytest.raises(ModelNotSupportedError):
            GuideEngine(gpt2, smol_tokenizer)
    else:  # GPT-2 routes through AttentionInterface in this transformers: emphasis works, influence does not
        engine = GuideEngine(gpt2, smol_tokenizer)
        assert not engine.supports_influence
        with pytest.raises(ModelNotSupportedError, match="GPT2LMHeadModel has none, so only emphasis is available"):
            engine.generate("<?-> x <-?> y", metric="influence")


def test_tagged_prompt_needs_a_fast_tokenizer(tiny, smol_tokenizer):
    class SlowTokenizer:
        is_fast = False
        chat_template = None
        eos_token_id = 2
        pad_token_id = 2

        def __call__(self, text, **kwargs):
            return {"input_ids": smol_tokenizer(text, **kwargs)["input_ids"]}

    engine = GuideEngine(tiny, SlowTokenizer())
    with pytest.raises(
        GuideError, match="tagged prompts need a fast tokenizer with character offsets; SlowTokenizer has none"
    ):
        engine.encode(PROMPT)
    assert len(engine.encode(UNTAGGED).input_ids) > 3  # untagged prompts still work
