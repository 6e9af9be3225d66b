"""Issue 21: is there one automatic emphasis mode that is never worse than no emphasis?

    python -m benchmarks.quality.never_hurts [--out benchmarks/results/never_hurts]

Builds the verdict from the steering records of both corpora (no model is run here): the Python
documentation (``benchmarks/results/steering`` and ``never_hurts``) and the project's prose
(``never_hurts``, ``--corpus prose``). Every record comes from :mod:`.steering`.

A *mode* is a rule that picks a fixed setting per prompt from where its emphasis ends (``distance``,
tokens after the last emphasized one): ``near`` below :data:`FAR` tokens, ``far`` from there on.
Because the pick depends on the prompt alone, a mode's outcome on a sample is the record of the
setting it picks, looked up rather than rerun (``--auto-run`` in :mod:`.steering` checked that the
looked-up and the real answers agree).

The bar for a default (the issue's): on the test half of both corpora, in every cell, the mode is
not significantly worse than no emphasis (exact McNemar, p < 0.05) and never more than one answer in
twelve below it; and in the long cells (≥ 1024 tokens) where the emphasis is far, it is better with
separated 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from .runner import Sink
from .stats import Rate, mcnemar_exact, rate
from .steering_report import FIXED, normalized, p_text, pick_fixed, separated

FAR = 512  # guide_engine.options.AUTO_CONTRAST_DISTANCE: where "auto" starts to contrast
LONG = 1024  # the cells where "better when the instruction is far" is asked for
MASKED = "masked Δ=1 γ=1"  # the far branch chosen on the tune half (needle and French, 1024 tokens)

# mode → (setting where the emphasis is near, setting where it is far)
MODES: dict[str, tuple[str, str]] = {
    "no emphasis": ("raw", "raw"),
    "GUIDE Δ=1 (the default)": ("guide Δ=1", "guide Δ=1"),
    "auto 0.3 (far: plain γ=4)": ("guide Δ=1", "contrast Δ=1 γ=4"),
    'contrast="auto" (far: masked γ=1)': ("guide Δ=1", MASKED),
    "near off, far masked": ("raw", MASKED),
}
CANDIDATES = ('contrast="auto" (far: masked γ=1)', "near off, far masked", "auto 0.3 (far: plain γ=4)")
BASELINE = "no emphasis"
TASKS = {"french": "French", "needle": "needle"}


def cell_key(record: dict[str, Any]) -> tuple[str, str, int, str]:
    return (record.get("corpus", "python"), record["task"], record["length"], record["position"])


def with_modes(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records plus one per (mode, sample) where the mode's chosen setting was run."""
    rows = normalized(records)
    for row in rows:
        row.setdefault("corpus", "python")
    by_key = {(*cell_key(r), r["condition"], r["sample"]): r for r in rows}
    distances: dict[tuple[Any, ...], int] = {}
    for r in rows:
        if r.get("distance") is not None:
            distances[(*cell_key(r), r["sample"])] = r["distance"]
    added = []
    for (*cell, sample), distance in sorted(distances.items()):
        for mode, (near, far) in MODES.items():
            source = far if distance >= FAR else near
            chosen = by_key.get((*cell, source, sample))
            if chosen is not None:
                added.append({**chosen, "condition": mode, "source": source, "distance": distance})
    return rows + added


def test_rows(cell: Sequence[dict[str, Any]], label: str) -> dict[int, dict[str, Any]]:
    return {r["sample"]: r for r in cell if r["condition"] == label and r["half"] == "test"}


def paired(cell: Sequence[dict[str, Any]], label: str, against: str) -> dict[str, Any] | None:
    """``label`` against ``against`` on the samples both have in the test half."""
    mine, theirs = test_rows(cell, label), test_rows(cell, against)
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    wins = sum(mine[s]["success"] and not theirs[s]["success"] for s in common)
    losses = sum(theirs[s]["success"] and not mine[s]["success"] for s in common)
    return {
        "mine": rate([mine[s]["success"] for s in common]),
        "theirs": rate([theirs[s]["success"] for s in common]),
        "wins": wins,
        "losses": losses,
        "p": mcnemar_exact(wins, losses),
    }


def best_fixed(cell: Sequence[dict[str, Any]]) -> str | None:
    """The cell's best fixed setting on the tune half, when every fixed setting has tune records."""
    tuned = {r["condition"] for r in cell if r["half"] == "tune"}
    return pick_fixed(cell) if all(label in tuned for label in FIXED) else None


def verdict(cell: Sequence[dict[str, Any]], candidate: str, far: bool, long: bool) -> dict[str, Any] | None:
    """A candidate against no emphasis in one cell, and whether it meets the bar there."""
    against = paired(cell, candidate, BASELINE)
    if against is None:
        return None
    mine, base = against["mine"], against["theirs"]
    significantly_worse = against["p"] < 0.05 and against["losses"] > against["wins"]
    no_worse = not significantly_worse and mine.successes >= base.successes - 1
    better = separated(mine, base)
    return {**against, "no_worse": no_worse, "better": better, "needs_better": far and long}


def report(records: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]] = ()) -> tuple[str, dict[str, Any]]:
    """The Markdown report and its data."""
    rows = with_modes(records)
    cells = sorted({cell_key(r) for r in rows}, key=lambda c: (c[0] != "python", c[1], c[2], c[3] != "before"))
    lines = [
        "# Emphasis that never hurts (issue 21): held-out verdict on two corpora",
        "",
        "Embedded SmolLM2-135M-Instruct, fp32, greedy; 24 texts per cell, the 12 even-numbered ones tune, the 12 "
        "odd-numbered ones are reported. Corpora: `python` = prose paragraphs of the Python documentation "
        "(`pydoc_data.topics`); `prose` = the project's own encyclopedic articles and stories (`examples/data` and "
        "`benchmarks/quality/prose`). Tasks: `french` = summarize in French (success: langdetect says French), "
        "`needle` = the code of the blue door, emphasis on the question (success: the code is in the answer). "
        f"Near/far: the emphasis ends fewer / at least {FAR} tokens before the prompt's end.",
        "",
        "Modes (each picks a fixed setting per prompt; its record is the record of that setting):",
        "",
        *[f"- **{mode}**: near → `{near}`, far → `{far}`" for mode, (near, far) in MODES.items()],
        "",
        "Runs:",
        "",
        *[f"- `{run['command']}` ({run['minutes']} min)" for run in runs],
        "",
        "![Held-out success per cell, 95 % Wilson intervals](success_rate.png)",
        "",
    ]
    data: dict[str, Any] = {}
    overview = ["| corpus | task | length | position | n | " + " | ".join(MODES) + " | best fixed (tune) |"]
    overview.append("| --- | --- | ---: | --- | ---: |" + " ---: |" * len(MODES) + " --- |")
    bars = {candidate: [] for candidate in CANDIDATES}
    meets = dict.fromkeys(CANDIDATES, True)
    for corpus, task, length, position in cells:
        cell = [r for r in rows if cell_key(r) == (corpus, task, length, position)]
        n = len(test_rows(cell, BASELINE))
        if not n:
            continue
        far = min((r["distance"] for r in cell if r.get("distance") is not None), default=0) >= FAR
        against_raw = {mode: paired(cell, mode, BASELINE) for mode in MODES}
        entries = []
        for mode, result in against_raw.items():
            degenerate = sum(r["degenerate"] for r in test_rows(cell, mode).values())
            entries.append("–" if result is None else _count(result["mine"], degenerate))
        best = best_fixed(cell)
        best_text = "–"
        if best is not None:
            against_best = paired(cell, CANDIDATES[0], best)
            best_text = best
            if against_best is not None:
                best_text += (
                    f": {_count(against_best['theirs'])}, {CANDIDATES[0]} {against_best['wins']}/"
                    f"{against_best['losses']} (p {p_text(against_best['p'])})"
                )
        head = f"| {corpus} | {task} | {length} | {position} | {n} | "
        overview.append(head + " | ".join(entries) + f" | {best_text} |")
        entry: dict[str, Any] = {
            "far": far,
            "modes": {mode: _counts(result) for mode, result in against_raw.items() if result is not None},
            "best_fixed": best,
        }
        for candidate in CANDIDATES:
            check = verdict(cell, candidate, far, length >= LONG)
            if check is None:
                bars[candidate].append(
                    f"| {corpus} | {task} | {length} | {position} | not run | | | | | | **missing** |"
                )
                meets[candidate] = False
                continue
            passed = check["no_worse"] and (check["better"] or not check["needs_better"])
            meets[candidate] = meets[candidate] and passed
            bars[candidate].append(
                f"| {corpus} | {task} | {length} | {position} | {_count(check['mine'])} | "
                f"{_count(check['theirs'])} | {check['wins']}/{check['losses']} | {p_text(check['p'])} | "
                f"{'yes' if check['no_worse'] else '**no**'} | "
                f"{'yes' if check['better'] else 'no'}{' (asked)' if check['needs_better'] else ''} | "
                f"{'pass' if passed else '**fail**'} |"
            )
            entry[candidate] = {k: check[k] for k in ("wins", "losses", "p", "no_worse", "better", "needs_better")}
        data[f"{corpus}|{task}|{length}|{position}"] = entry
    lines += [
        "## Held-out successes per mode (of n; d = degenerate answers, a repeated 3-gram share ≥ 0.5)",
        "",
        "The best fixed setting (raw, GUIDE Δ = 1 or 2, chosen on the tune half) is shown where all three were "
        "run on both halves, with the candidate's paired wins/losses against it.",
        "",
        *overview,
        "",
    ]
    for candidate in CANDIDATES:
        lines += [
            f"## The default bar: `{candidate}` against no emphasis",
            "",
            f"| corpus | task | length | position | {candidate} | no emphasis | wins/losses | p | no worse | "
            "separated above | bar |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
            *bars[candidate],
            "",
            f"**Verdict: `{candidate}` {'meets' if meets[candidate] else 'does not meet'} the bar for a default.**",
            "",
        ]
    data["meets_bar"] = meets
    return "\n".join(lines), data


def _count(success: Rate, degenerate: int = 0) -> str:
    lo, hi = success.interval
    shown = f"{success.successes}/{success.n} ({100 * lo:.0f}–{100 * hi:.0f} %)"
    return f"{shown}, {degenerate} d" if degenerate else shown


def _counts(result: dict[str, Any] | None) -> dict[str, Any]:
    assert result is not None
    return {"success": [result["mine"].successes, result["mine"].n], "wins": result["wins"], "losses": result["losses"]}


def plot(records: Sequence[dict[str, Any]], path: str) -> None:
    """Held-out success per cell for each mode, one panel per corpus × task, 95 % Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = with_modes(records)
    panels = sorted({(cell_key(r)[0], r["task"]) for r in rows})
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), sharey=True, squeeze=False)
    colours = ["#8c8c8c", "#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    assert len(colours) >= len(MODES), "one colour per mode"
    for axis, (corpus, task) in zip(axes[0], panels):
        cells = sorted(
            {(r["length"], r["position"]) for r in rows if (cell_key(r)[0], r["task"]) == (corpus, task)},
            key=lambda c: (c[1] != "before", c[0]),
        )
        for offset, (mode, colour) in enumerate(zip(MODES, colours)):
            xs, ys, errors = [], [], [[], []]
            for index, (length, position) in enumerate(cells):
                cell = [r for r in rows if cell_key(r) == (corpus, task, length, position)]
                result = paired(cell, mode, BASELINE)
                if result is None:
                    continue
                success = result["mine"]
                low, high = success.interval
                xs.append(index + (offset - (len(MODES) - 1) / 2) * 0.15)
                ys.append(success.value)
                errors[0].append(max(0.0, success.value - low))
                errors[1].append(max(0.0, high - success.value))
            axis.errorbar(xs, ys, yerr=errors, fmt="o", color=colour, label=mode, capsize=2, markersize=4)
        axis.set_xticks(range(len(cells)), [f"{length}\n{position}" for length, position in cells], fontsize=7)
        axis.set_title(f"{corpus}: {TASKS[task]}", fontsize=10)
        axis.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("success, held-out half")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/never_hurts")
    parser.add_argument("--python-records", default="benchmarks/results/steering/records.jsonl")
    args = parser.parse_args()
    records = (
        Sink(args.python_records, resume=True).records
        + Sink(os.path.join(args.out, "records.jsonl"), resume=True).records
    )
    steering_runs = os.path.join(os.path.dirname(args.python_records), "runs.jsonl")
    runs = Sink(steering_runs, resume=True).records + Sink(os.path.join(args.out, "runs.jsonl"), resume=True).records
    markdown, data = report(records, runs)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown + "\n")
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
    plot(records, os.path.join(args.out, "success_rate.png"))
    print(markdown)


if __name__ == "__main__":
    main()
