"""Where Δ applies and contrastive emphasis, against the best fixed Δ, on held-out texts (issue 13).

    python -m benchmarks.quality.steering --out benchmarks/results/steering [--lengths 256 1024]

The "summarize in French" task of :mod:`.french` (same texts, same scoring: langdetect for French,
the repeated-3-gram test for degenerate output), greedy, ``--tokens`` new tokens, one batch per
(length, position, condition). Conditions:

* ``raw``: no emphasis; ``guide Δ=1``, ``guide Δ=2``: the paper's GUIDE (every query) — the
  *fixed Δ* baselines;
* ``output Δ=…``: ``delta_queries="output"`` (only the queries that produce a token);
* ``contrast Δ=1 γ=…``: ``contrast=γ`` on the paper's GUIDE at Δ = 1.

Samples with even index are the **tune** half, odd the **test** half. On the tune half the best
fixed condition of each cell (length × position) is chosen by French rate (ties: fewer degenerate
answers, then smaller Δ); on the test half every candidate is compared with it: French and
degenerate rates with Wilson intervals, and an exact McNemar test on the paired French outcomes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .data import Condition, build_context, french_prompt  # noqa: E402
from .french import FRENCH_SALT  # noqa: E402
from .metrics import is_degenerate, is_french  # noqa: E402
from .runner import Progress, Sink, chunks, token_counter  # noqa: E402
from .stats import mcnemar_exact, rate  # noqa: E402

FIXED = ("raw", "guide Δ=1", "guide Δ=2")


def conditions(output_deltas: Sequence[float], gammas: Sequence[float]) -> dict[str, tuple[Condition, dict[str, Any]]]:
    """Label → (how the instruction is written, the engine options)."""
    table: dict[str, tuple[Condition, dict[str, Any]]] = {
        "raw": (Condition("raw"), {}),
        "guide Δ=1": (Condition("guide", 1.0), {"delta_mid": 1.0}),
        "guide Δ=2": (Condition("guide", 2.0), {"delta_mid": 2.0}),
    }
    for delta in output_deltas:
        table[f"output Δ={delta:g}"] = (Condition("guide", delta), {"delta_mid": delta, "delta_queries": "output"})
    for gamma in gammas:
        table[f"contrast Δ=1 γ={gamma:g}"] = (Condition("guide", 1.0), {"delta_mid": 1.0, "contrast": gamma})
    return table


def run(engine: Any, sink: Sink, args: argparse.Namespace) -> None:
    table = conditions(args.output_deltas, args.gammas)
    count = token_counter(engine)
    total = len(args.lengths) * args.contexts * len(args.positions) * len(table)
    progress = Progress(total, "steering")
    for length in args.lengths:
        contexts = [build_context(length, s, count, salt=FRENCH_SALT) for s in range(args.contexts)]
        for position in args.positions:
            for label, (condition, options) in table.items():
                todo = [s for s in range(args.contexts) if _key(length, position, label, s) not in sink.done]
                progress.step(args.contexts - len(todo), "(resumed)") if len(todo) < args.contexts else None
                for batch in chunks(todo, args.batch_size):
                    prompts = [french_prompt(contexts[s], condition, position) for s in batch]
                    results = engine.generate_batch(prompts, max_new_tokens=args.tokens, **options)
                    sink.add(
                        [
                            {
                                "key": _key(length, position, label, s),
                                "length": length,
                                "position": position,
                                "condition": label,
                                "sample": s,
                                "half": "tune" if s % 2 == 0 else "test",
                                "prompt_tokens": result.prompt_tokens,
                                "text": result.text,
                                "french": is_french(result.text),
                                "degenerate": is_degenerate(result.text),
                            }
                            for s, result in zip(batch, results)
                        ]
                    )
                    progress.step(len(batch), f"{length} {position} {label}")


def _key(length: int, position: str, label: str, sample: int) -> str:
    return f"{length}|{position}|{label}|{sample}"


def _pick_fixed(records: list[dict[str, Any]]) -> str:
    """The fixed condition with the best tune-half French rate (ties: fewer degenerate, smaller Δ)."""

    def score(label: str) -> tuple[float, float, int]:
        rows = [r for r in records if r["condition"] == label and r["half"] == "tune"]
        french, degenerate = rate([r["french"] for r in rows]), rate([r["degenerate"] for r in rows])
        return french.value, -degenerate.value, -FIXED.index(label)

    return max(FIXED, key=score)


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The Markdown report and its data: per cell, each condition on the test half against the best fixed."""
    labels = list(conditions(args.output_deltas, args.gammas))
    lines = [
        "# Where Δ applies, and contrastive emphasis: held-out evaluation",
        "",
        f"Command: `python -m benchmarks.quality.steering {' '.join(sys.argv[1:])}`",
        "",
        f"Embedded SmolLM2-135M-Instruct, fp32, greedy, {args.tokens} new tokens, 'Summarize this text in "
        f"French.' over English texts; {args.contexts} texts per cell, even-numbered ones tune the best "
        "fixed Δ, odd-numbered ones are reported. French = langdetect; degenerate = a repeated 3-gram "
        "share ≥ 0.5. Rates are % (successes/n, 95 % Wilson interval); p is the exact McNemar test on "
        "the paired French outcomes against the cell's best fixed condition.",
        "",
    ]
    data: dict[str, Any] = {}
    for length in args.lengths:
        for position in args.positions:
            cell = [r for r in records if r["length"] == length and r["position"] == position]
            if not cell:
                continue
            best = _pick_fixed(cell)
            base = {r["sample"]: r for r in cell if r["condition"] == best and r["half"] == "test"}
            lines += [
                f"## {length} tokens, instruction {position} the text — best fixed on the tune half: {best}",
                "",
                "| condition | French (test) | degenerate (test) | French (tune) | wins/losses vs best | p |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for label in labels:
                test = [r for r in cell if r["condition"] == label and r["half"] == "test"]
                tune = [r for r in cell if r["condition"] == label and r["half"] == "tune"]
                if not test:
                    continue
                wins = sum(r["french"] and not base[r["sample"]]["french"] for r in test if r["sample"] in base)
                losses = sum(base[r["sample"]]["french"] and not r["french"] for r in test if r["sample"] in base)
                french, degenerate = rate([r["french"] for r in test]), rate([r["degenerate"] for r in test])
                p = mcnemar_exact(wins, losses)
                lines.append(
                    f"| {label} | {french} | {degenerate} | {rate([r['french'] for r in tune])} | "
                    f"{wins}/{losses} | {p:.3f} |"
                )
                data[f"{length}|{position}|{label}"] = {
                    "french": [french.successes, french.n],
                    "degenerate": [degenerate.successes, degenerate.n],
                    "wins": wins,
                    "losses": losses,
                    "p": p,
                    "best_fixed": best,
                }
            lines.append("")
    return "\n".join(lines), data


def plot(records: list[dict[str, Any]], args: argparse.Namespace, path: str) -> None:
    """French rate (test half) per condition, one panel per cell, with 95 % Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(conditions(args.output_deltas, args.gammas))
    cells = [(length, position) for length in args.lengths for position in args.positions]
    figure, axes = plt.subplots(1, len(cells), figsize=(3.4 * len(cells), 3.6), sharey=True, squeeze=False)
    for axis, (length, position) in zip(axes[0], cells):
        shown = []
        for index, label in enumerate(labels):
            flags = [
                r["french"]
                for r in records
                if (r["length"], r["position"], r["condition"], r["half"]) == (length, position, label, "test")
            ]
            if not flags:
                continue
            french = rate(flags)
            low, high = french.interval
            axis.bar(index, french.value, color="#4c72b0" if label in FIXED else "#dd8452")
            axis.errorbar(
                index,
                french.value,
                yerr=[[max(0.0, french.value - low)], [max(0.0, high - french.value)]],
                color="black",
            )
            shown.append(index)
        axis.set_xticks(shown, [labels[i] for i in shown], rotation=60, ha="right", fontsize=8)
        axis.set_title(f"{length} tokens, instruction {position}", fontsize=9)
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("French answers (held-out half)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--positions", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--contexts", type=int, default=24, help="texts per cell (half tune, half test)")
    parser.add_argument("--output-deltas", type=float, nargs="*", default=[2.0, 4.0])
    parser.add_argument("--gammas", type=float, nargs="*", default=[4.0])
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 ran fastest on the shared 2 cores)")
    parser.add_argument("--out", default="benchmarks/results/steering")
    parser.add_argument("--resume", action="store_true", help="keep and skip the records already written")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    sink = Sink(os.path.join(args.out, "records.jsonl"), resume=args.resume or args.report_only)
    if not args.report_only:
        import torch

        from guide_engine import GuideEngine

        torch.set_num_threads(args.threads)
        started = time.time()
        run(GuideEngine.from_pretrained(None), sink, args)
        print(f"ran in {(time.time() - started) / 60:.1f} min", file=sys.stderr)
    markdown, data = report(sink.records, args)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown + "\n")
    plot(sink.records, args, os.path.join(args.out, "french_rate.png"))
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump({"args": vars(args), "cells": data}, handle, indent=2, ensure_ascii=False)
    print(markdown)


if __name__ == "__main__":
    main()
