"""Tables, recommendation and plots from the JSONL records of a run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .stats import mcnemar_exact, mean, rate, roc_auc

MAX_DEGENERATION_INCREASE = 0.05  # a recommended Δ may not degenerate 5 points more often than no emphasis
PREDICTORS = ("influence_last", "influence_mean", "rollout_last", "rollout_mean")


def _condition_order(record: dict[str, Any]) -> tuple:
    order = {"raw": 0, "important": 1, "upper": 2, "guide": 3}
    targets = {"question": 0, "needle": 1}
    return (order[record["name"]], targets.get(record.get("target", ""), 0), record["delta"])


def _positions(records: Sequence[dict[str, Any]]) -> list[str]:
    """``before`` first, then ``after``."""
    return sorted({r["position"] for r in records}, key=lambda p: (p != "before", p))


def _conditions(records: Sequence[dict[str, Any]]) -> list[str]:
    first: dict[str, dict[str, Any]] = {}
    for r in records:
        first.setdefault(r["condition"], r)
    return [label for label, _ in sorted(first.items(), key=lambda item: _condition_order(item[1]))]


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _grid_table(
    records: Sequence[dict[str, Any]],
    column: str,
    cell: Callable[[list[dict[str, Any]]], Any],
    first: str = "condition",
) -> str:
    """Rows: conditions; columns: values of ``column`` and "all"."""
    columns = _positions(records) if column == "position" else sorted({r[column] for r in records})
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["condition"], r[column])].append(r)
        groups[(r["condition"], "all")].append(r)
    rows = [[label] + [cell(groups.get((label, c), [])) for c in columns + ["all"]] for label in _conditions(records)]
    return _table(
        [first] + [f"{column} {c:g}" if isinstance(c, (int, float)) else str(c) for c in columns] + ["all"], rows
    )


def _paired_p(records: Sequence[dict[str, Any]], label: str, outcome: str, pair: Sequence[str]) -> float:
    """Exact McNemar p of ``label`` against ``raw`` on the same prompts."""
    raw = {tuple(r[k] for k in pair): r[outcome] for r in records if r["condition"] == "raw"}
    b = c = 0
    for r in records:
        if r["condition"] != label:
            continue
        base = raw.get(tuple(r[k] for k in pair))
        if base is None:
            continue
        b += base and not r[outcome]
        c += r[outcome] and not base
    return mcnemar_exact(b, c)


def recommend(
    records: Sequence[dict[str, Any]], outcome: str, pair: Sequence[str], candidates: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The Δ with the highest pooled success among ``candidates`` (no emphasis counts as Δ = 0).

    A Δ whose degeneration rate (when recorded) exceeds no emphasis by more than
    ``MAX_DEGENERATION_INCREASE`` is not eligible. The paired McNemar p against no emphasis says
    whether the gain is distinguishable from noise at this sample size.
    """
    pool = [r for r in records if r["condition"] == "raw" or candidates(r)]
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in pool:
        by_label[r["condition"]].append(r)
    if "raw" not in by_label:
        return {}
    raw_rate = rate([r[outcome] for r in by_label["raw"]])
    raw_degenerate = rate([r["degenerate"] for r in by_label["raw"]]) if "degenerate" in by_label["raw"][0] else None
    options = []
    for label, rs in by_label.items():
        success = rate([r[outcome] for r in rs])
        degenerate = rate([r["degenerate"] for r in rs]) if raw_degenerate is not None else None
        eligible = degenerate is None or degenerate.value <= raw_degenerate.value + MAX_DEGENERATION_INCREASE
        p = 1.0 if label == "raw" else _paired_p(pool, label, outcome, pair)
        options.append(
            {
                "label": label,
                "delta": rs[0]["delta"],
                "rate": success,
                "degenerate": degenerate,
                "p": p,
                "eligible": eligible,
            }
        )
    best = max((o for o in options if o["eligible"]), key=lambda o: (o["rate"].value, -o["delta"]))
    significant = best["label"] != "raw" and best["p"] < 0.05 and best["rate"].value > raw_rate.value
    return {"best": best, "raw": raw_rate, "significant": significant, "options": options}


def _recommendation_text(rec: dict[str, Any], what: str) -> str:
    if not rec:
        return f"- {what}: no data.\n"
    best, raw = rec["best"], rec["raw"]
    if best["label"] == "raw":
        return f"- {what}: **Δ = 0** — no Δ beat no emphasis ({raw}).\n"
    verdict = (
        "significant (paired McNemar p < 0.05)"
        if rec["significant"]
        else f"not significant (paired McNemar p = {best['p']:.2g})"
    )
    return (
        f"- {what}: **Δ = {best['delta']:g}** — {best['rate']} against {raw} without emphasis; the gain is {verdict}.\n"
    )


def french_section(records: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown for the French task (rates, degeneration, teacher-forced score, AUC) and a summary."""
    out, summary = ["## Summarize in French\n"], {}
    out.append("\n### Headline: French rate by context length, both instruction positions pooled\n\n")
    out.append(_grid_table(records, "length", lambda g: rate([r["french"] for r in g])) + "\n")
    out.append("\n### Headline: French rate and degeneration by instruction position, all lengths pooled\n\n")
    out.append(_grid_table(records, "position", lambda g: rate([r["french"] for r in g])) + "\n\n")
    out.append(_grid_table(records, "position", lambda g: rate([r["degenerate"] for r in g]), "degeneration") + "\n")
    out.append("\n### Headline: French *and* not degenerate (langdetect can call a loop or code French), by length\n\n")
    out.append(_grid_table(records, "length", lambda g: rate([r["french"] and not r["degenerate"] for r in g])) + "\n")
    scored_all = _with_gain(records)
    if scored_all:
        out.append(
            '\n### Headline: teacher-forced score, mean log P("Voici un résumé") − log P("Here is a summary") '
            "(mean change from no emphasis on the same prompt, prompts where it rose), both positions pooled\n\n"
        )
        out.append(_grid_table(scored_all, "length", _logprob_cell) + "\n\n")
        out.append(_grid_table(scored_all, "position", _logprob_cell) + "\n")
    for position in _positions(records):
        rs = [r for r in records if r["position"] == position]
        out.append(f"\n### Instruction {position} the text — French rate (count, 95% Wilson interval)\n\n")
        out.append(_grid_table(rs, "length", lambda g: rate([r["french"] for r in g])) + "\n")
        out.append(f"\n### Instruction {position} the text — degeneration rate\n\n")
        out.append(_grid_table(rs, "length", lambda g: rate([r["degenerate"] for r in g])) + "\n")
        scored = _with_gain(rs)  # the passes may stop at a maximum length
        if scored:
            out.append(
                f'\n### Instruction {position} the text — teacher-forced score: mean log P("Voici un résumé") − '
                'log P("Here is a summary") (change from no emphasis on the same prompt)\n\n'
            )
            out.append(_grid_table(scored, "length", _logprob_cell) + "\n")
    pair = ("length", "sample", "position")
    guide_only = lambda r: r["name"] == "guide"  # noqa: E731
    recs = {"all": recommend(records, "french", pair, guide_only)}
    for position in _positions(records):
        recs[position] = recommend([r for r in records if r["position"] == position], "french", pair, guide_only)
    out.append("\n### Recommended Δ (French rate, all lengths pooled)\n\n")
    for key, rec in recs.items():
        out.append(_recommendation_text(rec, "both positions" if key == "all" else f"instruction {key} the text"))
    out.append("\n### Other emphasis against no emphasis (paired McNemar, all lengths)\n\n")
    rows = []
    for label in _conditions(records):
        if label == "raw":
            continue
        rows.append(
            [
                label,
                rate([r["french"] for r in records if r["condition"] == label]),
                f"{_paired_p(records, label, 'french', pair):.2g}",
            ]
        )
    out.append(_table(["condition", "French rate", "McNemar p vs raw"], rows) + "\n")
    measured = [r for r in records if "influence_last" in r]
    if measured:
        lengths = ", ".join(str(n) for n in sorted({r["length"] for r in measured}))
        out.append(
            "\n### Does Influence predict success? ROC AUC of the instruction's Influence on the last prompt tokens "
            f"(context lengths {lengths})\n\n"
        )
        out.append(auc_table(measured) + "\n")
    summary["recommendation"] = {k: _rec_summary(v) for k, v in recs.items()}
    return "".join(out), summary


def _with_gain(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``tf``, the teacher-forced score, and ``tf_gain``, its change from no emphasis on the same prompt."""
    scored = [dict(r, tf=r["logprob_fr"] - r["logprob_en"]) for r in records if "logprob_fr" in r]
    raw = {(r["length"], r["sample"], r["position"]): r["tf"] for r in scored if r["name"] == "raw"}
    for r in scored:
        base = raw.get((r["length"], r["sample"], r["position"]))
        r["tf_gain"] = None if base is None or r["name"] == "raw" else r["tf"] - base
    return scored


def _logprob_cell(group: list[dict[str, Any]]) -> str:
    """``-5.74 (+0.93 vs raw, up 6/7, p=0.12)``: mean score, mean paired change, prompts where it rose.

    p is the exact two-sided sign test of the paired changes (McNemar's binomial test on ups and downs).
    """
    if not group:
        return "–"
    text = f"{mean([r['tf'] for r in group]):+.2f}"
    gains = [r["tf_gain"] for r in group if r.get("tf_gain") is not None]
    if gains:
        up, down = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
        text += f" ({mean(gains):+.2f} vs raw, up {up}/{len(gains)}, p={mcnemar_exact(down, up):.2g})"
    return text


def auc_table(records: Sequence[dict[str, Any]]) -> str:
    """AUC of each predictor for French success, on all prompts and on subsets."""
    subsets = {
        "all prompts": list(records),
        "instruction before": [r for r in records if r["position"] == "before"],
        "instruction after": [r for r in records if r["position"] == "after"],
        "GUIDE conditions only": [r for r in records if r["name"] == "guide"],
        "no Δ (raw, important, upper)": [r for r in records if r["name"] != "guide"],
        "no emphasis only": [r for r in records if r["name"] == "raw"],
    }
    rows = []
    for name, rs in subsets.items():
        labels = [r["french"] for r in rs]
        aucs = [roc_auc([r[p] for r in rs], labels) for p in PREDICTORS]
        rows.append([name, f"{sum(labels)}/{len(labels)}"] + ["–" if a is None else f"{a:.2f}" for a in aucs])
    header = [
        "prompts",
        "French/total",
        "Influence (last layer)",
        "Influence (mean of layers)",
        "rollout (last layer)",
        "rollout (mean of layers)",
    ]
    return _table(header, rows)


def _rec_summary(rec: dict[str, Any]) -> dict[str, Any]:
    if not rec:
        return {}
    best = rec["best"]
    return {
        "delta": best["delta"],
        "label": best["label"],
        "rate": best["rate"].value,
        "count": [best["rate"].successes, best["rate"].n],
        "raw_rate": rec["raw"].value,
        "mcnemar_p": best["p"],
        "significant": rec["significant"],
    }


def needle_section(records: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown for the needle task: exact match by length and by depth, and the recommendation."""
    out = ["## Needle in a haystack\n"]
    out.append("\n### Headline: exact match by haystack length, depths and question positions pooled\n\n")
    out.append(_grid_table(records, "length", lambda g: rate([r["correct"] for r in g])) + "\n")
    out.append("\n### Headline: exact match by question position, all lengths and depths pooled\n\n")
    out.append(_grid_table(records, "position", lambda g: rate([r["correct"] for r in g])) + "\n")
    for position in _positions(records):
        rs = [r for r in records if r["position"] == position]
        out.append(f"\n### Question {position} the haystack — exact match by haystack length\n\n")
        out.append(_grid_table(rs, "length", lambda g: rate([r["correct"] for r in g])) + "\n")
        out.append(f"\n### Question {position} the haystack — exact match by needle depth\n\n")
        out.append(_grid_table(rs, "depth", lambda g: rate([r["correct"] for r in g])) + "\n")
    pair = ("length", "sample", "depth", "position")
    recs = {
        "question": recommend(records, "correct", pair, lambda r: r.get("target") == "question"),
        "needle": recommend(records, "correct", pair, lambda r: r.get("target") == "needle"),
    }
    out.append("\n### Recommended Δ (exact match, all lengths, depths and positions pooled)\n\n")
    out.append(_recommendation_text(recs["question"], "emphasis on the question (what a user can do)"))
    out.append(
        _recommendation_text(recs["needle"], "emphasis on the needle (oracle: needs to know where the answer is)")
    )
    return "".join(out), {"recommendation": {k: _rec_summary(v) for k, v in recs.items()}}


# ---------------------------------------------------------------------------------------- plots


def _delta_axis(records: Sequence[dict[str, Any]], target: str | None = None) -> list[dict[str, Any]]:
    """Records of no emphasis (Δ = 0) and of GUIDE on ``target``."""
    return [
        r
        for r in records
        if r["name"] == "raw" or (r["name"] == "guide" and (target is None or r.get("target") == target))
    ]


def plot_rates(
    records: Sequence[dict[str, Any]],
    outcome: str,
    path: str,
    title: str,
    panels: Sequence[tuple[str, Callable[[dict[str, Any]], bool]]],
    ylabel: str,
) -> str:
    """Rate of ``outcome`` against Δ (0 = no emphasis), one line per context length, 95% Wilson bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False, sharey=True)
    for ax, (panel_title, keep) in zip(axes.flat, panels):
        rs = [r for r in records if keep(r)]
        lengths = sorted({r["length"] for r in rs})
        for index, length in enumerate(lengths + ["all"]):
            group = [r for r in rs if length == "all" or r["length"] == length]
            deltas = sorted({r["delta"] for r in group})
            rates = [rate([r[outcome] for r in group if r["delta"] == d]) for d in deltas]
            values = [100 * q.value for q in rates]
            lower = [max(0.0, 100 * (q.value - q.interval[0])) for q in rates]  # clamp rounding below 0
            upper = [max(0.0, 100 * (q.interval[1] - q.value)) for q in rates]
            shift = 0.03 * (index - len(lengths) / 2)  # side by side, so the bars stay readable
            style = {"color": "black", "linewidth": 2.5, "zorder": 3} if length == "all" else {"alpha": 0.75}
            label = "all lengths" if length == "all" else f"{length} tokens"
            ax.errorbar(
                [d + shift for d in deltas],
                values,
                yerr=[lower, upper],
                marker="o",
                capsize=3,
                elinewidth=1,
                label=label,
                **style,
            )
        ax.set_ylim(-3, 103)
        ax.set_title(panel_title)
        ax.set_xlabel("Δ (0 = no emphasis)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def french_plot(records: Sequence[dict[str, Any]], path: str) -> str:
    rs = _delta_axis(records)
    panels = [(f"instruction {p} the text", lambda r, p=p: r["position"] == p) for p in _positions(rs)]
    return plot_rates(
        rs, "french", path, "Summarize in French: French rate vs Δ on the instruction", panels, "French rate (%)"
    )


def needle_plot(records: Sequence[dict[str, Any]], path: str) -> str:
    panels = []
    for target in ("question", "needle"):
        for position in _positions(records):
            keep = (lambda t, p: lambda r: r["position"] == p and (r["name"] == "raw" or r.get("target") == t))(
                target, position
            )
            panels.append((f"Δ on the {target}, question {position}", keep))
    return plot_rates(records, "correct", path, "Needle in a haystack: exact match vs Δ", panels, "exact match (%)")


# ---------------------------------------------------------------------------------------- files


def load_run(out: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records of every ``*.jsonl`` in ``out`` and the run metadata of every ``run_*.json``."""
    import glob
    import json
    import os

    records: list[dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(out, "*.jsonl"))):
        with open(path, encoding="utf-8") as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "run_*.json"))):
        with open(path, encoding="utf-8") as handle:
            runs.append(json.load(handle))
    return records, runs


def write_report(out: str) -> str:
    """Write ``report.md``, ``summary.json`` and the plots into ``out``; return the report's path."""
    import json
    import os

    records, runs = load_run(out)
    parts = ["# GUIDE quality benchmark\n\n"]
    for meta in runs:
        parts.append(
            f"- `{meta['command']}` — task {meta['task']}, model {meta['model']}, preset {meta['preset']}: "
            f"{meta['records']} prompts in {meta['task_seconds'] / 60:.1f} min "
            f"(+{meta['load_seconds']:.0f} s model load), {meta['threads']} thread(s), finished {meta['finished']}\n"
        )
    summary: dict[str, Any] = {"runs": runs}
    for model in sorted({r["model"] for r in records}):
        parts.append(f"\n# Model: {model}\n\n")
        french = [r for r in records if r["task"] == "french" and r["model"] == model]
        needle = [r for r in records if r["task"] == "needle" and r["model"] == model]
        slug = model.replace("/", "_")
        if french:
            text, summary[f"french/{model}"] = french_section(french)
            plot = french_plot(french, os.path.join(out, f"french_rate_{slug}.png"))
            parts.append(text + f"\n![French rate against Δ]({os.path.basename(plot)})\n\n")
        if needle:
            text, summary[f"needle/{model}"] = needle_section(needle)
            plot = needle_plot(needle, os.path.join(out, f"needle_accuracy_{slug}.png"))
            parts.append(text + f"\n![Needle exact match against Δ]({os.path.basename(plot)})\n\n")
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(parts))
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=str)
    return path
