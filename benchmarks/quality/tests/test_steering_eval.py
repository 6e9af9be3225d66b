"""The steering evaluation's own parts: the cached teacher-forced logits, ``auto``'s lookup, the report."""

from __future__ import annotations

import pytest
import torch

from benchmarks.quality.steering_report import AUTO, AUTO_SOURCE, PLAIN_SOURCE, compare, report, with_auto
from benchmarks.quality.tests.records import steering_record as _record


def _cell(position: str, distance: int) -> list[dict]:
    """Four samples: raw fails everywhere, Δ=1 succeeds on 0 and 1, contrast on all but 1."""
    rows = []
    for s in range(4):
        rows += [
            _record("raw", s, False, position=position),
            _record("guide Δ=1", s, s < 2, distance=distance, position=position),
            _record("guide Δ=2", s, False, distance=distance, position=position),
            _record(AUTO_SOURCE, s, s != 1, distance=distance, position=position),
        ]
    return rows


def test_auto_is_the_record_of_the_setting_it_picks():
    rows = with_auto(_cell("before", 600) + _cell("after", 5), far=512)
    auto = {(r["position"], r["sample"]): r for r in rows if r["condition"] == AUTO}
    assert {r["source"] for (position, _), r in auto.items() if position == "before"} == {AUTO_SOURCE}
    assert {r["source"] for (position, _), r in auto.items() if position == "after"} == {PLAIN_SOURCE}
    assert [auto[("before", s)]["success"] for s in range(4)] == [True, False, True, True]
    assert [auto[("after", s)]["success"] for s in range(4)] == [True, True, False, False]


def test_comparison_and_report_against_the_best_fixed_condition():
    rows = with_auto(_cell("before", 600), far=512)
    result = compare(rows, AUTO, "guide Δ=1")  # test half: samples 1 and 3
    assert (result["success"].successes, result["success"].n, result["wins"], result["losses"]) == (1, 2, 1, 1)
    markdown, data = report(_cell("before", 600) + _cell("after", 5))
    assert "best fixed on the tune half: guide Δ=1" in markdown
    assert "| 512, before | guide Δ=1 | 1/2 | 1/2 | 1/1 | 1.000 | yes | no |" in markdown
    assert data["french|512|after|auto"]["success"] == [1, 2]
    stopped = [r for r in _cell("after", 5) if not (r["condition"] == "guide Δ=2" and r["sample"] == 3)]
    markdown, data = report(stopped)
    assert "512 tokens, after: incomplete (a run stopped early), not reported" in markdown and not data


@pytest.fixture(scope="module")
def engine():
    from transformers import AutoTokenizer

    from guide_engine import GuideEngine
    from guide_engine.loading import embedded_model_location
    from tests.reference import tiny_model

    folder, gguf = embedded_model_location()
    torch.manual_seed(0)
    return GuideEngine(tiny_model("llama"), AutoTokenizer.from_pretrained(folder, gguf_file=gguf))


@torch.no_grad()
def test_cached_opening_logits_equal_one_full_forward(engine):
    from benchmarks.quality.scoring import opening_logits, opening_logprob
    from guide_engine.attention import build_state

    prompt = "<!!-> Summarize this text in French. <-!!> The harbour was quiet that morning."
    openings = [[510, 61, 2093], [1003, 314]]
    for delta in (0.0, 2.0):
        cached = opening_logits(engine, prompt, delta, openings)
        encoded = engine.encode(prompt, delta_mid=delta)
        n = len(encoded.input_ids)
        state = build_state([encoded], engine.request_options(delta_mid=delta), n, "cpu")
        for opening, logits in zip(openings, cached):
            ids = torch.tensor([encoded.input_ids + opening])
            full = engine.model(input_ids=ids, use_cache=False, guide=state).logits[0, n - 1 : n - 1 + len(opening)]
            torch.testing.assert_close(logits, full.float(), atol=1e-5, rtol=1e-5)
            expected = torch.log_softmax(full.float(), -1)[range(len(opening)), opening].sum()
            assert opening_logprob(logits, opening) == pytest.approx(float(expected), abs=1e-4)
    plain, emphasized = (opening_logits(engine, prompt, d, openings)[0] for d in (0.0, 2.0))
    assert not torch.allclose(plain, emphasized), "Δ must reach the teacher-forced logits"
