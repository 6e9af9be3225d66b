"""Issue 21's verdict: modes as lookups of the setting they pick, and the default bar."""

from __future__ import annotations

from benchmarks.quality.never_hurts import CANDIDATES, MASKED, report, with_modes
from benchmarks.quality.tests.records import steering_record

CANDIDATE = CANDIDATES[1]  # near → raw, far → MASKED


def _record(condition, sample, success, *, length, position, distance):
    return steering_record(
        condition, sample, success, task="needle", length=length, position=position, distance=distance, corpus="prose"
    )


def _cell(length: int, position: str, distance: int, raw: list[bool], masked: list[bool]) -> list[dict]:
    rows = []
    for s in range(2 * len(raw)):
        rows.append(_record("raw", s, raw[s // 2], length=length, position=position, distance=distance))
        rows.append(_record(MASKED, s, masked[s // 2], length=length, position=position, distance=distance))
    return rows


def test_a_mode_is_the_record_of_the_setting_it_picks_by_distance():
    rows = with_modes(
        _cell(1024, "before", 1000, [False] * 3, [True] * 3) + _cell(256, "after", 4, [True] * 3, [False] * 3)
    )
    picked = {(r["length"], r["sample"]): r["source"] for r in rows if r["condition"] == CANDIDATE}
    assert set(picked.values()) == {MASKED, "raw"}
    assert all(source == (MASKED if length == 1024 else "raw") for (length, _), source in picked.items())
    assert all(r["success"] for r in rows if r["condition"] == CANDIDATE and r["length"] == 1024)


def test_the_bar_passes_when_the_far_long_cell_is_separated_and_no_cell_is_worse():
    far = _cell(1024, "before", 1000, [False] * 12, [True] * 12)
    near = _cell(256, "after", 4, [True] * 12, [False] * 12)  # near: the candidate is raw itself
    markdown, data = report(far + near)
    assert data["meets_bar"][CANDIDATE] is True
    assert f"**Verdict: `{CANDIDATE}` meets the bar for a default.**" in markdown


def test_the_bar_fails_two_answers_below_no_emphasis_even_without_significance():
    far = _cell(512, "before", 600, [True] * 12, [True] * 10 + [False] * 2)  # 2/0 losses: p = 0.5
    markdown, data = report(far)
    assert data["meets_bar"][CANDIDATE] is False
    assert data["prose|needle|512|before"][CANDIDATE]["no_worse"] is False


def test_the_bar_fails_a_long_far_cell_without_separated_intervals():
    far = _cell(2048, "before", 2000, [False] * 12, [True] * 2 + [False] * 10)  # 2/12 against 0/12
    _, data = report(far)
    cell = data["prose|needle|2048|before"][CANDIDATE]
    assert (cell["no_worse"], cell["better"], cell["needs_better"]) == (True, False, True)
    assert data["meets_bar"][CANDIDATE] is False
