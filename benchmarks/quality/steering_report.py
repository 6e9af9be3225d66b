"""The steering evaluation's report: held-out success per cell against the best fixed Δ, and ``auto``.

Kept apart from :mod:`.steering` (which runs the model) so the report can be rebuilt and tested
from the records alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .stats import Rate, mcnemar_exact, mean, rate

AUTO = "auto"
AUTO_SOURCE = "contrast Δ=1 γ=4"  # what contrast="auto" runs where the emphasis is far
PLAIN_SOURCE = "guide Δ=1"  # and where it is near (γ = 0)
FIXED = ("raw", "guide Δ=1", "guide Δ=2")
TASK_TITLES = {
    "french": "Summarize in French (success: the answer is French)",
    "needle": "Needle, emphasis on the question (success: the code is in the answer)",
}


def normalized(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of both schemas: the first run's French records had ``french`` and no ``task``."""
    out = []
    for record in records:
        record = dict(record)
        record.setdefault("task", "french")
        record.setdefault("success", record.get("french"))
        out.append(record)
    return out


def auto_source(distance: int, far: int) -> str:
    """The condition whose record ``auto`` is: contrast where the emphasis is far, plain GUIDE Δ = 1 else."""
    return AUTO_SOURCE if distance >= far else PLAIN_SOURCE


def with_auto(records: list[dict[str, Any]], far: int | None = None) -> list[dict[str, Any]]:
    """Add the ``auto`` record of every sample: the record of the setting ``contrast="auto"`` picks.

    The choice depends only on the prompt (where its emphasis ends), so it is looked up, not rerun.
    """
    if far is None:
        from guide_engine.options import AUTO_CONTRAST_DISTANCE

        far = AUTO_CONTRAST_DISTANCE
    by_key = {(r["task"], r["length"], r["position"], r["condition"], r["sample"]): r for r in records}
    added = []
    for r in records:
        if r["condition"] != PLAIN_SOURCE or r.get("distance") is None:
            continue
        source = auto_source(r["distance"], far)
        chosen = by_key.get((r["task"], r["length"], r["position"], source, r["sample"]))
        if chosen is not None:
            added.append({**chosen, "condition": AUTO, "source": source})
    return records + added


def labels_of(records: Sequence[dict[str, Any]]) -> list[str]:
    """Conditions in table order: the fixed ones, output-only, contrast, auto, auto as run."""
    present = {r["condition"] for r in records}
    order = [*FIXED]
    order += sorted(label for label in present if label.startswith("output"))
    order += sorted(label for label in present if label.startswith("contrast"))
    order += [label for label in (AUTO, f"{AUTO} (run)") if label in present]
    return [label for label in order if label in present]


def pick_fixed(cell: Sequence[dict[str, Any]]) -> str:
    """The fixed condition with the best tune-half success (ties: fewer degenerate, smaller Δ)."""

    def score(label: str) -> tuple[float, float, int]:
        rows = [r for r in cell if r["condition"] == label and r["half"] == "tune"]
        return (
            rate([r["success"] for r in rows]).value,
            -rate([r["degenerate"] for r in rows]).value,
            -FIXED.index(label),
        )

    return max((label for label in FIXED if any(r["condition"] == label for r in cell)), key=score)


def p_text(p: float) -> str:
    """``0.016`` or ``< 0.001``."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def complete(cell: Sequence[dict[str, Any]]) -> bool:
    """Whether every fixed condition has as many records as the cell's largest condition."""
    counts = {label: sum(r["condition"] == label for r in cell) for label in {r["condition"] for r in cell}}
    return all(counts.get(label, 0) == max(counts.values()) for label in FIXED)


def separated(better: Rate, worse: Rate) -> bool:
    """Whether the 95 % Wilson intervals do not overlap, ``better`` above."""
    return better.interval[0] > worse.interval[1]


def compare(cell: Sequence[dict[str, Any]], label: str, best: str) -> dict[str, Any]:
    """``label`` against ``best`` on the test half: rates, paired wins/losses, McNemar p."""
    base = {r["sample"]: r for r in cell if r["condition"] == best and r["half"] == "test"}
    test = [r for r in cell if r["condition"] == label and r["half"] == "test"]
    tune = [r for r in cell if r["condition"] == label and r["half"] == "tune"]
    paired = [r for r in test if r["sample"] in base]
    wins = sum(r["success"] and not base[r["sample"]]["success"] for r in paired)
    losses = sum(base[r["sample"]]["success"] and not r["success"] for r in paired)
    return {
        "success": rate([r["success"] for r in test]),
        "degenerate": rate([r["degenerate"] for r in test]),
        "tune": rate([r["success"] for r in tune]),
        "wins": wins,
        "losses": losses,
        "p": mcnemar_exact(wins, losses),
    }


def score_cell(scores: Sequence[dict[str, Any]], length: int, position: str, label: str, best: str) -> str:
    """Mean teacher-forced score of ``label`` on the test half, and how often it beats ``best``'s."""
    rows = [
        r["scores"]
        for r in scores
        if (r["length"], r["position"]) == (length, position) and r["sample"] % 2 and label in r["scores"]
    ]
    if not rows or best not in rows[0]:
        return "–"
    up = sum(r[label] > r[best] for r in rows)
    down = sum(r[label] < r[best] for r in rows)
    shown = f"{mean([r[label] for r in rows]):+.2f}"
    return shown if label == best else f"{shown} (up {up}/{len(rows)}, p: {p_text(mcnemar_exact(up, down))})"


def auto_scores(scores: list[dict[str, Any]], records: Sequence[dict[str, Any]], far: int) -> list[dict[str, Any]]:
    """The teacher-forced score of ``auto`` per sample: the score of the setting it picks."""
    distance = {
        (r["length"], r["position"], r["sample"]): r.get("distance")
        for r in records
        if r["task"] == "french" and r["condition"] == PLAIN_SOURCE
    }
    out = []
    for row in scores:
        d = distance.get((row["length"], row["position"], row["sample"]))
        extra = {}
        if d is not None and AUTO_SOURCE in row["scores"]:
            extra = {AUTO: row["scores"][auto_source(d, far)]}
        out.append({**row, "scores": {**row["scores"], **extra}})
    return out


def report(
    records: Sequence[dict[str, Any]], scores: Sequence[dict[str, Any]] = (), runs: Sequence[dict[str, Any]] = ()
) -> tuple[str, dict[str, Any]]:
    """The Markdown report and its data."""
    from guide_engine.options import AUTO_CONTRAST_DISTANCE as far

    rows = with_auto(normalized(records), far)
    scored = auto_scores(list(scores), rows, far)
    lines = [
        '# Where Δ applies, contrastive emphasis and contrast="auto": held-out evaluation',
        "",
        *[f"- `{run['command']}` ({run['minutes']} min)" for run in runs],
        "",
        "Embedded SmolLM2-135M-Instruct, fp32, greedy. 24 texts per cell: even-numbered ones tune the best fixed "
        "condition (raw, GUIDE Δ = 1 or 2) of each cell, odd-numbered ones are reported. Rates are % "
        "(successes/n, 95 % Wilson interval); p is the exact McNemar test on the paired outcomes against the "
        "cell's best fixed condition. Degenerate = a repeated 3-gram share ≥ 0.5. "
        f'`auto` is version 0.3\'s `contrast="auto"` at Δ = 1: γ = 4 against the plain pass where the emphasis '
        f"ends ≥ {far} tokens before the prompt's end, else plain GUIDE Δ = 1; its outcome is the record of the "
        'setting it picks. Today\'s `contrast="auto"` is judged in [never_hurts](../never_hurts/report.md).',
        "",
        "![Success rate per condition and cell, held-out half, 95 % Wilson intervals](success_rate.png)",
        "",
    ]
    data: dict[str, Any] = {}
    for task in [t for t in TASK_TITLES if any(r["task"] == t for r in rows)]:
        lines += _task_section(task, rows, scored, data)
    return "\n".join(lines), data


def _task_section(task: str, rows: list[dict[str, Any]], scores: list[dict[str, Any]], data: dict) -> list[str]:
    mine = [r for r in rows if r["task"] == task]
    cells = sorted({(r["length"], r["position"]) for r in mine}, key=lambda c: (c[0], c[1] != "before"))
    labels = labels_of(mine)
    lines = [f"## {TASK_TITLES[task]}", ""]
    verdict = ["| cell | best fixed (tune) | its test | auto test | auto wins/losses | p | auto no worse | separated |"]
    verdict.append("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    details: list[str] = []
    for length, position in cells:
        cell = [r for r in mine if (r["length"], r["position"]) == (length, position)]
        if not complete(cell):
            details += [f"### {length} tokens, {position}: incomplete (a run stopped early), not reported", ""]
            continue
        best = pick_fixed(cell)
        best_rate = compare(cell, best, best)["success"]
        details += [
            f"### {length} tokens, {'instruction' if task == 'french' else 'question'} {position} the text — "
            f"best fixed on the tune half: {best}",
            "",
            "| condition | success (test) | degenerate (test) | success (tune) | wins/losses vs best | p |"
            + (" teacher-forced score (test) |" if task == "french" and scores else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if task == "french" and scores else ""),
        ]
        for label in labels:
            result = compare(cell, label, best)
            if not result["success"].n:
                continue
            row = (
                f"| {label} | {result['success']} | {result['degenerate']} | {result['tune']} | "
                f"{result['wins']}/{result['losses']} | {p_text(result['p'])} |"
            )
            if task == "french" and scores:
                row += f" {score_cell(scores, length, position, label, best)} |"
            details.append(row)
            data[f"{task}|{length}|{position}|{label}"] = {
                "success": [result["success"].successes, result["success"].n],
                "degenerate": [result["degenerate"].successes, result["degenerate"].n],
                "wins": result["wins"],
                "losses": result["losses"],
                "p": result["p"],
                "best_fixed": best,
            }
        details.append("")
        auto = compare(cell, AUTO, best)
        if auto["success"].n:
            a, b = auto["success"], best_rate
            no_worse = "yes" if a.successes >= b.successes else "no"
            verdict.append(
                f"| {length}, {position} | {best} | {b.successes}/{b.n} | {a.successes}/{a.n} | "
                f"{auto['wins']}/{auto['losses']} | {p_text(auto['p'])} | {no_worse} | "
                f"{'yes' if separated(a, b) else 'no'} |"
            )
        ran = [r for r in cell if r["condition"] == f"{AUTO} (run)"]
        if ran:
            derived = {r["sample"]: r["text"] for r in cell if r["condition"] == AUTO}
            same = sum(derived.get(r["sample"]) == r["text"] for r in ran)
            details += [
                f"`auto` run for real in this cell: the same answer as its looked-up record in {same}/{len(ran)}.",
                "",
            ]
    overview = _overview(mine, [c for c in cells if complete([r for r in mine if (r["length"], r["position"]) == c])])
    return [
        *lines,
        "Successes on the test half (of 12; **bold**: the cell's best fixed condition, chosen on the tune half; "
        "d: degenerate answers):",
        "",
        *overview,
        "",
        "`auto` against the best fixed condition, test half:",
        "",
        *verdict,
        "",
        *details,
    ]


def _overview(mine: list[dict[str, Any]], cells: list[tuple[int, str]]) -> list[str]:
    """One compact table: conditions × cells, test-half successes (and degenerate answers)."""
    best = {c: pick_fixed([r for r in mine if (r["length"], r["position"]) == c]) for c in cells}
    lines = ["| condition | " + " | ".join(f"{length}, {position}" for length, position in cells) + " |"]
    lines.append("| --- |" + " ---: |" * len(cells))
    for label in [label for label in labels_of(mine) if label != f"{AUTO} (run)"]:
        entries = []
        for cell in cells:
            where = (*cell, label, "test")
            test = [r for r in mine if (r["length"], r["position"], r["condition"], r["half"]) == where]
            if not test:
                entries.append("–")
                continue
            shown = f"{sum(r['success'] for r in test)}/{len(test)}"
            shown = f"**{shown}**" if label == best[cell] else shown
            degenerate = sum(r["degenerate"] for r in test)
            entries.append(f"{shown} ({degenerate} d)" if degenerate else shown)
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    return lines


def plot(records: Sequence[dict[str, Any]], path: str) -> None:
    """Success rate (test half) per condition, one row of panels per task, with 95 % Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from guide_engine.options import AUTO_CONTRAST_DISTANCE

    rows = with_auto(normalized(records), AUTO_CONTRAST_DISTANCE)
    tasks = [t for t in TASK_TITLES if any(r["task"] == t for r in rows)]
    width = max(len({(r["length"], r["position"]) for r in rows if r["task"] == t}) for t in tasks)
    figure, axes = plt.subplots(len(tasks), width, figsize=(3.0 * width, 3.6 * len(tasks)), sharey=True, squeeze=False)
    for line, task in zip(axes, tasks):
        mine = [r for r in rows if r["task"] == task]
        labels = [label for label in labels_of(mine) if label != f"{AUTO} (run)"]
        cells = sorted({(r["length"], r["position"]) for r in mine}, key=lambda c: (c[0], c[1] != "before"))
        cells = [c for c in cells if complete([r for r in mine if (r["length"], r["position"]) == c])]
        for axis, (length, position) in zip(line, cells):
            for index, label in enumerate(labels):
                flags = [
                    r["success"]
                    for r in mine
                    if (r["length"], r["position"], r["condition"], r["half"]) == (length, position, label, "test")
                ]
                if not flags:
                    continue
                success = rate(flags)
                low, high = success.interval
                colour = "#4c72b0" if label in FIXED else "#55a868" if label == AUTO else "#dd8452"
                axis.bar(index, success.value, color=colour)
                axis.errorbar(
                    index,
                    success.value,
                    yerr=[[max(0.0, success.value - low)], [max(0.0, high - success.value)]],
                    color="black",
                )
            axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            axis.set_title(f"{task}: {length} tokens, {position}", fontsize=9)
            axis.set_ylim(0, 1)
        for axis in line[len(cells) :]:
            axis.set_visible(False)
        line[0].set_ylabel("success (held-out half)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
