"""The IFEval report, from the records alone: accuracies with Wilson intervals, McNemar, groups, one plot.

    python -m benchmarks.quality.ifeval --report-only [--out benchmarks/results/ifeval]

For each model, half (``odd`` is reported, ``even`` tunes) and condition: prompt- and
instruction-level accuracy, strict and loose (IFEval's four numbers) with 95 % Wilson intervals; an
exact McNemar test against ``untagged`` on the prompts both have (prompt level, strict); the share
of answers cut by the token budget; the degeneration rate (the steering report's measure: half the
word trigrams repeat) and the mean answer length. Then, per instruction group, the instructions a
condition passes and ``untagged`` fails (wins) and the reverse (losses), strict; and the untagged
baseline beside the model card's figure.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from .ifeval_scoring import GROUPS, group
from .stats import Rate, mcnemar_exact, mean, rate

BASELINE = "untagged"
HALVES = ("odd", "even")
TOTAL_PROMPTS = 541

# model → (published IFEval figure, where it comes from)
PUBLISHED = {
    "smollm2": (29.9, "SmolLM2-135M-Instruct model card: the average of prompt- and instruction-level accuracy"),
    "gemma3-270m": (51.2, "Gemma 3 270M IT model card"),
}


def _rates(rows: Sequence[dict[str, Any]]) -> dict[str, Rate]:
    instructions = [v for r in rows for v in r["instructions"]]
    return {
        "prompt_strict": rate([r["prompt_strict"] for r in rows]),
        "prompt_loose": rate([r["prompt_loose"] for r in rows]),
        "instruction_strict": rate([v["strict"] for v in instructions]),
        "instruction_loose": rate([v["loose"] for v in instructions]),
    }


def _cells(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict[int, dict[str, Any]]]:
    """(model, half, condition) → key → record."""
    cells: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        cells[(r["model"], r["half"], r["condition"])][r["key"]] = r
    return cells


def _rank(condition: str) -> tuple[int, str]:
    """Conditions in the runner's order (untagged first), unknown ones after, by name."""
    from .ifeval import CONDITIONS

    names = list(CONDITIONS)
    return (names.index(condition), "") if condition in names else (len(names), condition)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, half, condition) with every number of the report."""
    cells = _cells(records)
    out = []
    for model, half, condition in sorted(cells, key=lambda c: (c[0], HALVES.index(c[1]), _rank(c[2]))):
        rows = cells[(model, half, condition)]
        ordered = [rows[k] for k in sorted(rows)]
        entry: dict[str, Any] = {"model": model, "half": half, "condition": condition, "prompts": len(ordered)}
        entry.update({name: _rate_json(r) for name, r in _rates(ordered).items()})
        entry["cut"] = _rate_json(rate([r["finish_reason"] == "length" for r in ordered]))
        entry["degenerate"] = _rate_json(rate([r["degenerate"] for r in ordered]))
        entry["mean_words"] = round(mean([r["words"] for r in ordered]), 1)
        entry["mean_completion_tokens"] = round(mean([r["completion_tokens"] for r in ordered]), 1)
        entry["copied"] = sum("copied_from" in r for r in ordered)
        entry["budgets"] = sorted({r["options"]["max_new_tokens"] for r in ordered})
        base = cells.get((model, half, BASELINE), {})
        if condition != BASELINE and base:
            keys = sorted(set(rows) & set(base))
            wins = sum(rows[k]["prompt_strict"] and not base[k]["prompt_strict"] for k in keys)
            losses = sum(base[k]["prompt_strict"] and not rows[k]["prompt_strict"] for k in keys)
            groups: dict[str, list[int]] = {g: [0, 0] for g in GROUPS}
            for k in keys:
                for mine, theirs in zip(rows[k]["instructions"], base[k]["instructions"]):
                    if mine["strict"] != theirs["strict"]:
                        groups[group(mine["id"])][0 if mine["strict"] else 1] += 1
            entry["versus_untagged"] = {
                "paired_prompts": len(keys),
                "wins": wins,
                "losses": losses,
                "mcnemar_p": mcnemar_exact(wins, losses),
                "groups": groups,
            }
        out.append(entry)
    return out


def _rate_json(r: Rate) -> dict[str, Any]:
    lo, hi = r.interval
    return {"successes": r.successes, "n": r.n, "value": r.value, "low": lo, "high": hi}


def _fmt(r: dict[str, Any]) -> str:
    return str(Rate(r["successes"], r["n"]))


def report(records: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The Markdown report and the summary it is made of."""
    entries = summarize(records)
    lines = [
        "# IFEval: does emphasis on the instruction sentences help?",
        "",
        "Generated by `python -m benchmarks.quality.ifeval --report-only` from `records.jsonl` alone. "
        "Greedy, the model's chat template, scored by IFEval's own checkers (`if-verifiable`); "
        "the odd keys are the reported half, the even keys tune. Rates are "
        "`% (successes/n, 95 % Wilson interval)`. `cut`: answers stopped by the token budget. "
        "`McNemar`: prompts this condition follows strictly and untagged does not (wins) and the "
        "reverse (losses), with the exact two-sided p-value.",
        "",
        "## Records",
        "",
        "| model | half | condition | prompts | copied from untagged | budget (new tokens) |",
        "|---|---|---|---:|---:|---|",
    ]
    for e in entries:
        budgets = ", ".join(str(b) for b in e["budgets"])
        lines.append(f"| {e['model']} | {e['half']} | {e['condition']} | {e['prompts']} | {e['copied']} | {budgets} |")
    for half in HALVES:
        if any(e["half"] == half for e in entries):
            title = "reported half" if half == "odd" else "tuning half (screening)"
            lines += ["", f"## {half.capitalize()} keys: {title}", "", *half_tables(entries, half)]
    lines += ["", "## Untagged against the published figure", ""]
    lines += _baselines(records)
    lines += ["", "## Runs", "", "| command | started | minutes | records added |", "|---|---|---:|---:|"]
    for run in runs:
        lines.append(
            f"| `{run['command']}` | {run.get('started', '')} | {run.get('minutes', '')} "
            f"| {run.get('records_added', '')} |"
        )
    minutes = sum(float(run.get("minutes", 0.0)) for run in runs)
    lines += ["", f"CPU time logged: {minutes / 60:.1f} hours of wall clock (one thread per run)."]
    return "\n".join(lines), {"cells": entries}


def half_tables(entries: Sequence[dict[str, Any]], half: str) -> list[str]:
    """The accuracy table of one half, then its wins and losses by instruction group."""
    chosen = [e for e in entries if e["half"] == half]
    lines = [
        "| model | condition | prompts | prompt strict | prompt loose | instruction strict | instruction loose "
        "| McNemar vs untagged (W/L, p) | cut | degenerate | mean words |",
        "|---|---|---:|---|---|---|---|---|---|---|---:|",
    ]
    for e in chosen:
        versus = e.get("versus_untagged")
        test = f"{versus['wins']}/{versus['losses']}, p = {versus['mcnemar_p']:.3g}" if versus else "–"
        lines.append(
            f"| {e['model']} | {e['condition']} | {e['prompts']} | {_fmt(e['prompt_strict'])} "
            f"| {_fmt(e['prompt_loose'])} | {_fmt(e['instruction_strict'])} | {_fmt(e['instruction_loose'])} "
            f"| {test} | {_fmt(e['cut'])} | {_fmt(e['degenerate'])} | {e['mean_words']} |"
        )
    grouped = [e for e in chosen if e.get("versus_untagged")]
    if grouped:
        lines += [
            "",
            f"Instructions won / lost against untagged, by group ({half} keys, strict):",
            "",
            "| model | condition | " + " | ".join(GROUPS) + " |",
            "|---|---|" + "---:|" * len(GROUPS),
        ]
        for e in grouped:
            cells = " | ".join(f"{won}/{lost}" for won, lost in (e["versus_untagged"]["groups"][g] for g in GROUPS))
            lines.append(f"| {e['model']} | {e['condition']} | {cells} |")
    return lines


def _baselines(records: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | prompts | prompt strict | instruction strict | mean of the two (strict) | mean (loose) "
        "| published |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["condition"] == BASELINE:
            by_model[r["model"]].append(r)
    for model, rows in sorted(by_model.items()):
        rates = _rates(rows)
        strict = 50 * (rates["prompt_strict"].value + rates["instruction_strict"].value)
        loose = 50 * (rates["prompt_loose"].value + rates["instruction_loose"].value)
        figure, source = PUBLISHED.get(model, (None, ""))
        published = f"{figure} ({source})" if figure is not None else "–"
        coverage = f"{len(rows)} of {TOTAL_PROMPTS}"
        lines.append(
            f"| {model} | {coverage} | {rates['prompt_strict']} | {rates['instruction_strict']} | {strict:.1f} "
            f"| {loose:.1f} | {published} |"
        )
    if not by_model:
        lines.append("| – | 0 | – | – | – | – | – |")
    return lines


def plot(records: Sequence[dict[str, Any]], path: str) -> None:
    """Prompt- and instruction-level strict accuracy per condition on the odd half, with Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in summarize(records) if e["half"] == "odd"]
    models = sorted({e["model"] for e in entries})
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [e for e in entries if e["model"] == model]
        for offset, name, label in ((-0.18, "prompt_strict", "prompt"), (0.18, "instruction_strict", "instruction")):
            xs = [i + offset for i in range(len(mine))]
            values = [100 * e[name]["value"] for e in mine]
            errors = [
                [100 * (e[name]["value"] - e[name]["low"]) for e in mine],
                [100 * (e[name]["high"] - e[name]["value"]) for e in mine],
            ]
            ax.bar(xs, values, width=0.36, yerr=errors, capsize=3, label=f"{label} level, strict")
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels([f"{e['condition']}\n(n={e['prompts']})" for e in mine], fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"IFEval, odd keys: {model}")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], out: str) -> str:
    """Write ``report.md``, ``table.md`` (for the docs), ``summary.json`` and ``accuracy.png`` into ``out``.

    Returns:
        The path of ``report.md``.
    """
    markdown, summary = report(records, runs)
    counts = Counter((r["model"], r["condition"], r["half"]) for r in records)
    summary["records"] = [
        {"model": m, "condition": c, "half": h, "count": n} for (m, c, h), n in sorted(counts.items())
    ]
    # the odd half and the baselines alone, for docs/choosing-delta.md to include
    table = half_tables(summary["cells"], "odd") + ["", "Untagged, all keys so far, beside the published figure:", ""]
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(table + _baselines(records)) + "\n")
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(markdown + "\n")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, ensure_ascii=False)
    plot(records, os.path.join(out, "accuracy.png"))
    return path
