"""``compile=True`` (static cache + torch.compile) against eager decoding, and the cache keyword.

The compiled engine must produce the eager engine's greedy tokens with and without tags, in a
batch, with contrast and with constraints. Most tests compile with the ``aot_eager`` backend
(dynamo's graph capture, the static cache and the fixed step bias, without inductor's minutes of
C++ builds); one compiles with the default inductor backend.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from guide_engine import GuideEngine, GuideValueError, ModelNotSupportedError, decoding
from guide_engine.kv_cache import MIN_STATIC_CACHE, cache_keyword, static_cache_length
from tests.reference import tiny_model

PROMPTS = [
    "<!!-> Answer in French. <-!!> What is the capital of Italy?",
    "A longer question, with <!-> a lighter emphasis <-!> in its middle, about the weather in Rome.",
]
OPTIONS = [
    {},
    {"contrast": 4.0},
    {"delta_queries": "output", "heads": [1, 3]},
    {"response_format": {"type": "json_object"}},
    {"temperature": 0.8, "seed": 7, "top_k": 20},
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (dynamo caches compiled frames per code object, process-wide)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(params=["llama", "qwen2"])
def full_attention(request):
    torch.manual_seed(0)
    return tiny_model(request.param)


def _engines(model, tokenizer, backend="aot_eager"):
    eager = GuideEngine(model, tokenizer, delta_mid=3.0)
    compiled = GuideEngine(model, tokenizer, delta_mid=3.0, compile={"backend": backend})
    return eager, compiled


def _tokens(results):
    return [r.token_ids for r in results]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_compiled_batch_equals_eager(full_attention, smol_tokenizer, options):
    eager, compiled = _engines(full_attention, smol_tokenizer)
    expected = _tokens(eager.generate_batch(PROMPTS, max_new_tokens=10, **options))
    assert _tokens(compiled.generate_batch(PROMPTS, max_new_tokens=10, **options)) == expected
    untagged = ["What is the capital of Italy?"]
    assert _tokens(compiled.generate_batch(untagged, max_new_tokens=10, **options)) == _tokens(
        eager.generate_batch(untagged, max_new_tokens=10, **options)
    )


def test_compiled_stream_equals_eager_and_the_emphasis_matters(full_attention, smol_tokenizer):
    eager, compiled = _engines(full_attention, smol_tokenizer)
    stream = compiled.stream(PROMPTS[0], max_new_tokens=12)
    text = "".join(stream)
    expected = eager.generate(PROMPTS[0], max_new_tokens=12)
    assert (text, stream.result.token_ids) == (expected.text, expected.token_ids)
    plain = compiled.generate(PROMPTS[0], max_new_tokens=12, delta_mid=0.0)
    assert plain.token_ids != expected.token_ids, "Δ must change the tokens on this prompt, or the test proves nothing"


def test_compiled_with_inductor_equals_eager(smol_tokenizer):
    """The default backend, once: generated C++ kernels on CPU, CUDA graphs on a GPU."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    eager, compiled = (
        GuideEngine(model, smol_tokenizer, delta_mid=3.0),
        GuideEngine(model, smol_tokenizer, delta_mid=3.0, compile=True),
    )
    assert _tokens(compiled.generate_batch(PROMPTS, max_new_tokens=8)) == _tokens(
        eager.generate_batch(PROMPTS, max_new_tokens=8)
    )


def test_requests_of_other_lengths_reuse_the_compiled_graphs(smol_tokenizer):
    """One graph per (rows, cache length) and tagged or not; other prompt lengths reuse them."""
    torch.manual_seed(0)
    counter = CompileCounter()
    engine = GuideEngine(tiny_model("llama"), smol_tokenizer, compile={"backend": counter})
    engine.generate(PROMPTS[0], max_new_tokens=6)
    assert counter.frame_count == 1
    engine.generate(PROMPTS[1], max_new_tokens=9)  # another length, another Δ
    engine.generate(PROMPTS[0] + " And of Spain?", max_new_tokens=6, delta_mid=1.0, layers=[0, 2])
    assert counter.frame_count == 2, "a layer selection is a new graph; prompt lengths and Δ are not"
    engine.generate("An untagged prompt", max_new_tokens=6)
    engine.generate("Another untagged prompt, longer than that one", max_new_tokens=6)
    assert counter.frame_count == 3
    assert engine.compiled is not None and engine.compiled.shapes == {(1, MIN_STATIC_CACHE)}


def test_static_cache_lengths_are_powers_of_two_capped_by_the_context():
    assert static_cache_length(10, 8192) == MIN_STATIC_CACHE
    assert static_cache_length(MIN_STATIC_CACHE, 8192) == MIN_STATIC_CACHE
    assert static_cache_length(MIN_STATIC_CACHE + 1, 8192) == 2 * MIN_STATIC_CACHE
    assert static_cache_length(5000, 8192) == 8192
    assert static_cache_length(5000, 6000) == 6000
    assert static_cache_length(300, None) == 512


@pytest.mark.parametrize("family", ["gemma3"])
def test_sliding_window_models_are_refused(family, smol_tokenizer):
    with pytest.raises(ModelNotSupportedError, match="sliding-window layers.*compile=False"):
        GuideEngine(tiny_model(family), smol_tokenizer, compile=True)


def test_bad_compile_values_are_named(smol_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(GuideValueError, match="compile must be True, False or a mapping.*'yes'"):
        GuideEngine(model, smol_tokenizer, compile="yes")
    with pytest.raises(GuideValueError, match="not torch.compile's"):
        GuideEngine(model, smol_tokenizer, compile={"fullgraf": True})


# ------------------------------------------------------------------------ the cache keyword


def test_cache_keyword_follows_the_forward_signature():
    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs): ...

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, **kwargs): ...

    assert cache_keyword(Old()) == "past_key_values"
    assert cache_keyword(New()) == "cache"
    assert cache_keyword(tiny_model("llama")) in ("cache", "past_key_values")


def test_a_dropped_cache_keyword_is_refused_loudly(smol_tokenizer, monkeypatch):
    """A transformers that ignores the keyword (5.19 with ``cache=``) would decode garbage; the engine refuses."""
    engine = GuideEngine(tiny_model("llama"), smol_tokenizer)
    monkeypatch.setattr(decoding, "cache_keyword", lambda model: "a_keyword_transformers_drops")
    with pytest.raises(ModelNotSupportedError, match=r"did not fill the KV cache .*holds 0 tokens after a \d+-token"):
        engine.generate("Hello", max_new_tokens=3)
    monkeypatch.undo()
    assert engine.generate("Hello", max_new_tokens=3).completion_tokens == 3  # still usable
