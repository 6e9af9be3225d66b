"""The embedded SmolLM2-135M-Instruct: tags, parity with transformers' pipelines, the seed's interface."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline

from guide_engine import GuideValueError, PayAttentionPipeline, strip_tags

pytestmark = pytest.mark.real_model

DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It is named after the engineer "
    "Gustave Eiffel, whose company designed and built the tower for the 1889 World's Fair."
)
README_PROMPT = f"<!!!-> Rewrite in French: <-!!!> {DOCUMENT}"


@pytest.fixture(scope="module")
def text_generation(real_engine):
    return pipeline("text-generation", model=real_engine.model, tokenizer=real_engine.tokenizer)


def test_tags_in_system_and_user_messages(real_engine):
    messages = [
        {"role": "system", "content": "You are a helpful assistant. <!-> Always answer in French. <-!>"},
        {"role": "user", "content": f"<!!-> Summarize: <-!!> {DOCUMENT}"},
    ]
    encoded = real_engine.encode(messages, delta_mid=2.0)
    clean = [{**m, "content": strip_tags(m["content"])} for m in messages]
    plain = real_engine.tokenizer.apply_chat_template(
        clean, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert encoded.input_ids == list(plain["input_ids"])
    assert [(s.message_index, s.level, s.delta) for s in encoded.spans] == [(0, 1, 1.0), (1, 2, 2.0)]
    for span in encoded.spans:
        covered = real_engine.tokenizer.decode(encoded.input_ids[span.token_start : span.token_end])
        assert covered.strip() == span.text.strip()
        assert all(d == span.delta for d in encoded.token_deltas[span.token_start : span.token_end])
    assert sum(1 for d in encoded.token_deltas if d) == sum(s.token_end - s.token_start for s in encoded.spans)


def test_emphasis_changes_the_greedy_output_of_the_readme_example(real_engine):
    with_delta = real_engine.generate(README_PROMPT, max_new_tokens=40, delta_mid=1.0)  # level 3: Δ = 2
    without = real_engine.generate(README_PROMPT, max_new_tokens=40, delta_mid=0.0)
    assert with_delta.spans[0].delta == 2.0
    assert with_delta.text != without.text


def test_untagged_output_equals_the_text_generation_pipeline(real_engine, text_generation):
    messages = [{"role": "user", "content": f"Rewrite in French: {DOCUMENT}"}]
    expected = text_generation(messages, max_new_tokens=30, do_sample=False)[0]["generated_text"][-1]["content"]
    assert real_engine.generate(messages, max_new_tokens=30).text == expected
    assert real_engine.generate(f"Rewrite in French: {DOCUMENT}", max_new_tokens=30).text == expected


def test_real_batch_equals_one_by_one(real_engine):
    prompts = [README_PROMPT, "<!-> One word only. <-!> What colour is the sky?", "Say hello."]
    batch = real_engine.generate_batch(prompts, max_new_tokens=12)
    for prompt, row in zip(prompts, batch):
        assert row.token_ids == real_engine.generate(prompt, max_new_tokens=12).token_ids


def test_pay_attention_pipeline_keeps_the_seed_interface(real_engine, text_generation):
    pipe = pipeline("pay-attention", model=real_engine.model, tokenizer=real_engine.tokenizer, delta_mid=1.0)
    assert isinstance(pipe, PayAttentionPipeline)
    # Without tags: exactly the text-generation pipeline, chats and strings alike.
    for prompt in ("The capital of France is", [{"role": "user", "content": "Say hello."}]):
        ours = pipe(prompt, max_new_tokens=12, do_sample=False)[0]
        theirs = text_generation(prompt, max_new_tokens=12, do_sample=False)[0]
        assert ours["generated_text"] == theirs["generated_text"]
        assert isinstance(ours["tokens"], torch.Tensor)
    # With tags: the engine's greedy output; a tagged string goes through the chat template.
    out = pipe(README_PROMPT, max_new_tokens=20, do_sample=False, return_full_text=False)[0]
    assert out["generated_text"] == real_engine.generate(README_PROMPT, max_new_tokens=20, delta_mid=1.0).text
    assert "influence" not in out
    # Sampling keywords reach the engine: top_k=1 samples the greedy token, the penalty is the engine's.
    top1 = pipe(README_PROMPT, max_new_tokens=12, do_sample=True, top_k=1, return_full_text=False)[0]
    assert top1["generated_text"] == real_engine.generate(README_PROMPT, max_new_tokens=12).text
    penalized = pipe(README_PROMPT, max_new_tokens=20, do_sample=False, repetition_penalty=1.5, return_full_text=False)
    expected = real_engine.generate(README_PROMPT, max_new_tokens=20, repetition_penalty=1.5).text
    assert penalized[0]["generated_text"] == expected
    with pytest.raises(GuideValueError, match="does not take no_repeat_ngram_size, num_beams; it takes do_sample"):
        pipe(README_PROMPT, max_new_tokens=4, num_beams=2, no_repeat_ngram_size=3)


def test_pay_attention_pipeline_returns_influence(real_engine):
    pipe = pipeline("pay-attention", model=real_engine.model, tokenizer=real_engine.tokenizer)
    prompt = f"<?-> Rewrite in French: <-?> {DOCUMENT}"
    out = pipe(prompt, max_new_tokens=8, do_sample=False, metric="influence", delta_influence=1.0)[0]
    expected = real_engine.generate(prompt, max_new_tokens=8, metric="influence", delta_influence=1.0).influence
    assert out["influence"].delta_influence == 1.0
    assert sorted(out["influence"]) == list(range(-1, 30))
    torch.testing.assert_close(out["influence"][29], expected[29])


def test_the_demo_runs_and_its_claim_holds(real_engine):
    """examples/demo.py (set-up command 1) runs, and its claims hold: on its 256-token text Δ = 1 turns an
    English answer into French; on its 1024-token text Δ = 1 does not, and contrast="auto" does."""
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.quality.metrics import is_french

    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
    spec = importlib.util.spec_from_file_location("guide_demo", demo)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = real_engine.generate(module.PROMPT, max_new_tokens=40, delta_mid=0.0)
    guided = real_engine.generate(module.PROMPT, max_new_tokens=40, delta_mid=1.0)
    assert not is_french(plain.text), plain.text
    assert is_french(guided.text), guided.text
    alone = real_engine.generate(module.LONG_PROMPT, max_new_tokens=40, delta_mid=1.0)
    auto = real_engine.generate(module.LONG_PROMPT, max_new_tokens=40, delta_mid=1.0, contrast="auto")
    assert not is_french(alone.text), alone.text
    assert is_french(auto.text), auto.text
    run = subprocess.run(
        [sys.executable, str(demo), "--max-new-tokens", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "No emphasis" in run.stdout and "GUIDE, Δ = 1" in run.stdout
    assert 'GUIDE, Δ = 1, contrast="auto"' in run.stdout
