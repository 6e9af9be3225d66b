"""Statistics, scoring and data builders of ``benchmarks.quality``, against hand-computed values (no model)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.quality.data import (
    FRENCH_INSTRUCTION,
    NEEDLE_QUESTION,
    Condition,
    build_context,
    french_prompt,
    insert_needle,
    needle_code,
    needle_prompt,
    source_paragraphs,
)
from benchmarks.quality.metrics import contains_code, is_degenerate, is_french, language, repeated_ngram_ratio
from benchmarks.quality.report import recommend, write_report
from benchmarks.quality.runner import Sink
from benchmarks.quality.stats import Rate, mcnemar_exact, rate, roc_auc, wilson_interval
from guide_engine import parse_tags

Z = 1.959963984540054


# ------------------------------------------------------------------------------------ Wilson


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (0, 10, (0.0, 0.2775)),  # textbook values (e.g. Newcombe 1998, table I style)
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_interval_matches_published_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=5e-5)
    assert hi == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(1, 4), (3, 7), (17, 40), (99, 100)])
def test_wilson_endpoints_solve_the_score_equation(k, n):
    # The Wilson bounds are the p with (p̂ − p)² = z² p (1 − p) / n.
    p_hat = k / n
    for p in wilson_interval(k, n):
        if 0 < p < 1:
            assert (p_hat - p) ** 2 == pytest.approx(Z * Z * p * (1 - p) / n, rel=1e-9)


def test_wilson_edge_cases_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes=5, n=3"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="successes=-1"):
        wilson_interval(-1, 3)


def test_rate_formats_count_and_interval():
    assert str(Rate(5, 10)) == "50.0% (5/10, 23.7–76.3)"
    assert str(Rate(0, 0)) == "– (0/0)"
    assert rate([True, False, True, True]) == Rate(3, 4)
    assert math.isnan(Rate(0, 0).value)


# ------------------------------------------------------------------------------ AUC, McNemar


def test_roc_auc_hand_computed():
    # Pairs (positive, negative): (0.35>0.1 ✓, 0.35<0.4 ✗, 0.8 ✓, 0.8 ✓) → 3/4.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.9, 0.1], [False, True]) == pytest.approx(0.0)
    assert roc_auc([0.5, 0.5], [False, True]) == pytest.approx(0.5)  # a tie counts one half


def test_roc_auc_undefined_and_mismatch():
    assert roc_auc([0.1, 0.2], [True, True]) is None
    assert roc_auc([0.1, 0.2], [0, 0]) is None
    with pytest.raises(ValueError, match="3 != 2"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (0, 5, 2 / 32),
        (1, 9, 2 * (1 + 10) / 1024),
        (9, 1, 2 * (1 + 10) / 1024),
        (3, 3, 1.0),  # 2 · 42/64 > 1, capped
        (2, 8, 2 * (1 + 10 + 45) / 1024),
    ],
)
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="-1"):
        mcnemar_exact(-1, 2)


# ---------------------------------------------------------------------------- output scoring


def test_repeated_ngram_ratio():
    assert repeated_ngram_ratio("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc: one repeat of four
    assert repeated_ngram_ratio("la la la la la") == pytest.approx(2 / 3)
    assert repeated_ngram_ratio("Un deux trois quatre cinq") == 0.0
    assert repeated_ngram_ratio("two words") == 0.0
    assert repeated_ngram_ratio("A b C a B c") == pytest.approx(1 / 4)  # case-insensitive


def test_is_degenerate():
    assert is_degenerate("")
    assert is_degenerate("... !!! ---")
    assert is_degenerate("le le le le le le")
    assert not is_degenerate("Le texte explique comment fonctionne l'instruction assert en Python.")
    assert not is_degenerate("a b c a b c")  # 0.25 < 0.5


def test_language_detection_is_deterministic():
    french = "Le texte explique comment l'instruction assert permet d'insérer des vérifications dans un programme."
    english = "The text explains how the assert statement inserts debugging checks into a program."
    assert language(french) == "fr" and is_french(french)
    assert language(english) == "en" and not is_french(english)
    assert [language(french) for _ in range(3)] == ["fr"] * 3
    assert language("") is None and language("1234 !!") is None


def test_contains_code_is_a_whole_number_match():
    assert contains_code("The secret code is 4721.", "4721")
    assert contains_code("4721", "4721")
    assert not contains_code("47210", "4721")
    assert not contains_code("4 7 2 1", "4721")
    assert not contains_code("I do not know.", "4721")


# ------------------------------------------------------------------------------------- data

PARAS = ["a b c.", "d e f g.", "h i."]


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize(
    ("n", "sample", "expected"),
    [
        (5, 0, "a b c.\n\nd e"),  # 3 words, then 2 of the next paragraph's 4
        (5, 1, "d e f g.\n\nh"),  # starts at 211 mod 3 = 1
        (5, 2, "h i.\n\na b c."),  # starts at 422 mod 3 = 2, wraps around, the rest does not fit
        (2, 0, "a b"),
        (100, 0, "a b c.\n\nd e f g.\n\nh i."),  # the whole corpus once
    ],
)
def test_build_context_hand_computed(n, sample, expected):
    assert build_context(n, sample, words, paragraphs=PARAS) == expected


def test_build_context_salt_and_errors():
    assert build_context(4, 0, words, salt=1, paragraphs=PARAS) == "d e f g."
    with pytest.raises(ValueError, match="n_tokens must be a positive integer, got 0"):
        build_context(0, 0, words, paragraphs=PARAS)


def test_source_paragraphs_are_prose_and_deterministic():
    paragraphs = source_paragraphs()
    assert len(paragraphs) > 500
    assert all(p.endswith(".") and "\n" not in p and not p.startswith(" ") for p in paragraphs)
    assert paragraphs[0].startswith(
        'These equivalences assume that "__debug__"'
    )  # its ":"-ended predecessor is dropped
    text = build_context(300, 3, words)
    assert text == build_context(300, 3, words) and 280 <= words(text) <= 300


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (0.0, "N. One. Two. Three."),
        (0.5, "One. Two. N. Three."),  # boundaries at 0, 4, 9, 16; target 8 → 9
        (0.3, "One. N. Two. Three."),  # target 4.8 → 4
        (1.0, "One. Two. Three. N."),
    ],
)
def test_insert_needle(depth, expected):
    assert insert_needle("One. Two. Three.", "N.", depth) == expected


def test_insert_needle_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth must be between 0 and 1, got 1.5"):
        insert_needle("One.", "N.", 1.5)


def _only_span(prompt: str):
    parsed = parse_tags(prompt)
    assert len(parsed.spans) == 1
    return parsed, parsed.spans[0]


def test_french_prompts():
    context = "Some <!->tagged<-!> text."
    assert french_prompt("CTX", Condition("raw"), "before") == f"{FRENCH_INSTRUCTION}\n\nCTX"
    assert french_prompt("CTX", Condition("upper"), "after") == "CTX\n\nSUMMARIZE THIS TEXT IN FRENCH."
    assert french_prompt("CTX", Condition("important"), "before") == f"Important: {FRENCH_INSTRUCTION}\n\nCTX"
    # GUIDE: a level-2 tag, so delta_mid = Δ gives exactly Δ; tags in the context are escaped.
    parsed, span = _only_span(french_prompt(context, Condition("guide", 3.0), "before"))
    assert (span.kind, span.level, span.text, span.delta(3.0, 0.0)) == ("emphasis", 2, FRENCH_INSTRUCTION, 3.0)
    assert parsed.text == f"{FRENCH_INSTRUCTION}\n\n{context}"
    # Measuring: an influence span on the whole instruction, Δ from delta_influence.
    parsed, span = _only_span(french_prompt(context, Condition("important"), "after", measure=True))
    assert (span.kind, span.text, span.delta(1.0, 0.0)) == ("influence", f"Important: {FRENCH_INSTRUCTION}", 0.0)
    _, span = _only_span(french_prompt("CTX", Condition("guide", 2.0), "after", measure=True))
    assert span.delta(1.0, 2.0) == 2.0
    with pytest.raises(ValueError, match="unknown French condition 'loud'"):
        french_prompt("CTX", Condition("loud"), "before")
    with pytest.raises(ValueError, match="position must be 'before' or 'after', got 'middle'"):
        french_prompt("CTX", Condition("raw"), "middle")


def test_needle_prompts():
    needle = "The secret code of the blue door is 4721."
    raw = needle_prompt("One. Two.", "4721", 1.0, Condition("raw"), "before")
    assert raw == f"{NEEDLE_QUESTION}\n\nOne. Two. {needle}" and not parse_tags(raw).spans
    parsed, span = _only_span(needle_prompt("One. Two.", "4721", 0.0, Condition("guide", 0.5, "needle"), "after"))
    assert span.text == needle and span.delta(0.5, 0.0) == 0.5
    assert parsed.text == f"{needle} One. Two.\n\n{NEEDLE_QUESTION}"
    _, span = _only_span(needle_prompt("One. Two.", "4721", 0.5, Condition("guide", 2.0, "question"), "before"))
    assert span.text == NEEDLE_QUESTION
    with pytest.raises(ValueError, match="targets 'question' or 'needle', got 'instruction'"):
        needle_prompt("One.", "1", 0.0, Condition("guide", 1.0), "before")


def test_needle_codes_and_labels():
    codes = {needle_code(s, d, n) for s in range(3) for d in (0.0, 0.5, 1.0) for n in (256, 512)}
    assert len(codes) == 18 and all(len(c) == 4 and c.isdigit() for c in codes)
    assert needle_code(1, 0.5, 256) == needle_code(1, 0.5, 256) == str(1000 + (7919 + 50 * 104729 + 256 * 131) % 9000)
    assert Condition("raw").label == "raw"
    assert Condition("guide", 0.5).label == "guide Δ=0.5"
    assert Condition("guide", 2.0, "needle").label == "guide Δ=2 (needle)"


# ------------------------------------------------------------------------- report and sink


def _french_records(label, name, delta, french, degenerate):
    return [
        {
            "task": "french",
            "model": "m",
            "length": 128,
            "sample": i,
            "position": "before",
            "condition": label,
            "name": name,
            "delta": delta,
            "french": f,
            "degenerate": g,
            "key": f"{label}|{i}",
        }
        for i, (f, g) in enumerate(zip(french, degenerate))
    ]


def test_recommend_prefers_the_best_eligible_delta_and_tests_it_paired():
    ten = [False] * 10
    records = (
        _french_records("raw", "raw", 0.0, [True, True] + [False] * 8, ten)
        + _french_records("guide Δ=1", "guide", 1.0, [True] * 8 + [False] * 2, ten)
        # Δ = 5 is French more often but degenerates in 6 of 10: not eligible.
        + _french_records("guide Δ=5", "guide", 5.0, [True] * 9 + [False], [True] * 6 + [False] * 4)
    )
    rec = recommend(records, "french", ("length", "sample", "position"), lambda r: r["name"] == "guide")
    assert rec["best"]["label"] == "guide Δ=1"
    assert rec["best"]["rate"] == Rate(8, 10) and rec["raw"] == Rate(2, 10)
    assert rec["best"]["p"] == pytest.approx(2 / 64)  # 6 discordant pairs, all in favour of Δ = 1
    assert rec["significant"]
    # Without a gain the recommendation is no emphasis.
    flat = _french_records("raw", "raw", 0.0, [True] * 5 + [False] * 5, ten) + _french_records(
        "guide Δ=1", "guide", 1.0, [True] * 4 + [False] * 6, ten
    )
    rec = recommend(flat, "french", ("length", "sample", "position"), lambda r: r["name"] == "guide")
    assert rec["best"]["label"] == "raw" and not rec["significant"]


def test_sink_resumes_and_report_is_written(tmp_path):
    path = tmp_path / "french.jsonl"
    sink = Sink(str(path), resume=False)
    ten = [False] * 10
    records = _french_records("raw", "raw", 0.0, [True] * 3 + [False] * 7, ten) + _french_records(
        "guide Δ=2", "guide", 2.0, [True] * 6 + [False] * 4, ten
    )
    sink.add(records[:5])
    resumed = Sink(str(path), resume=True)
    assert resumed.done == {r["key"] for r in records[:5]}
    resumed.add(records[5:])
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == [r["key"] for r in records]
    assert Sink(str(path), resume=False).records == [] and path.read_text() == ""
    Sink(str(path), resume=False).add(records)
    report = tmp_path / "report.md"
    assert write_report(str(tmp_path)) == str(report)
    text = report.read_text()
    assert "| raw | 30.0% (3/10, 10.8–60.3) | 30.0% (3/10, 10.8–60.3) |" in text
    assert "**Δ = 2** — 60.0% (6/10, 31.3–83.2)" in text
    assert (tmp_path / "french_rate_m.png").stat().st_size > 1000


def test_teacher_forced_cell_pairs_each_prompt_with_no_emphasis():
    from benchmarks.quality.report import _logprob_cell, _with_gain

    def record(name, sample, fr, en):
        return {"name": name, "length": 128, "sample": sample, "position": "before", "logprob_fr": fr, "logprob_en": en}

    records = [
        record("raw", 0, -9.0, -3.0),
        record("raw", 1, -8.0, -4.0),
        record("guide", 0, -7.0, -3.0),
        record("guide", 1, -8.5, -4.0),
    ]
    scored = _with_gain(records)
    assert [r["tf"] for r in scored] == [-6.0, -4.0, -4.0, -4.5]
    assert [r["tf_gain"] for r in scored] == [None, None, 2.0, -0.5]
    assert _logprob_cell(scored[2:]) == "-4.25 (+0.75 vs raw, up 1/2, p=1)"
    assert _logprob_cell(scored[:2]) == "-5.00"
    assert _logprob_cell([]) == "–"


def test_samples_option_parses_and_rejects():
    import argparse

    from benchmarks.quality.__main__ import _samples

    assert _samples("512:6,1024:4") == {512: 6, 1024: 4}
    with pytest.raises(argparse.ArgumentTypeError, match="got '512'"):
        _samples("512")
    with pytest.raises(argparse.ArgumentTypeError, match="positive integers, got '512:0'"):
        _samples("512:0")
