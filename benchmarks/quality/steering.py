"""Where Δ applies, contrast and ``contrast="auto"`` against the best fixed Δ, on held-out texts (issue 13).

    python -m benchmarks.quality.steering --out benchmarks/results/steering [--task french|needle]
        [--lengths 256 1024] [--positions before after] [--teacher-forced] [--auto-run] [--fresh]

Two tasks, greedy, one batch per (length, position, condition):

* ``french``: "Summarize this text in French." over the English texts of :mod:`.french`; success
  is French by langdetect, ``--tokens`` (40) new tokens;
* ``needle``: the needle of :mod:`.needle` ("The secret code of the blue door is NNNN.") at depth
  0.1, 0.5 or 0.9 (by sample), the emphasis on the *question* (what a user can emphasize); success
  is the code in the answer, 20 new tokens.

Conditions: ``raw`` (no emphasis); ``guide Δ=1``, ``guide Δ=2`` (the paper's GUIDE, every query)
— the *fixed Δ* baselines; ``output Δ=…`` (``delta_queries="output"``); ``contrast Δ=1 γ=…``
(``contrast=γ`` on GUIDE at Δ = 1); and ``auto``: version 0.3's ``contrast="auto"`` at Δ = 1, which
is GUIDE Δ = 1 with γ = 4 (plain reference) where the emphasis ends ≥ 512 tokens before the
prompt's end and γ = 0 elsewhere. Since that choice is a function of the prompt alone, the ``auto``
row is the record of the setting it chooses; ``--auto-run`` also runs that rule for real and the
report counts the identical answers. (Today's ``"auto"`` and the other candidates of issue 21 —
``--variants``, ``--corpus prose`` — are judged by :mod:`.never_hurts`.)

Samples with even index are the **tune** half, odd the **test** half. On the tune half the best
fixed condition of each cell (task × length × position) is chosen by success rate (ties: fewer
degenerate answers, then smaller Δ); on the test half every candidate is compared with it: success
and degenerate rates with Wilson intervals, and an exact McNemar test on the paired outcomes.
``--teacher-forced`` adds the French task's cheap score, log P("Voici un résumé") − log P("Here is
a summary") under each condition's logits (contrast: the combined logits), compared pair by pair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .data import Condition, build_context, french_prompt, needle_code, needle_prompt, prose_paragraphs  # noqa: E402
from .french import FRENCH_SALT  # noqa: E402
from .metrics import contains_code, is_degenerate, is_french  # noqa: E402
from .needle import NEEDLE_SALT  # noqa: E402
from .runner import Progress, Sink, chunks, token_counter  # noqa: E402
from .steering_report import AUTO, plot, report  # noqa: E402

NEEDLE_DEPTHS = (0.1, 0.5, 0.9)
NEW_TOKENS = {"french": 40, "needle": 20}
CORPORA = ("python", "prose")

# Candidates of issue 21: label → (Δ of the span, engine options, guide_engine.decoding knobs). The
# plausibility constraint is a research knob of contrast="auto", not an option: distance 0 makes
# every emphasized row "far", so "auto" is then the fixed setting the label names.
VARIANTS: dict[str, tuple[float, dict[str, Any], dict[str, Any]]] = {
    "masked Δ=1 γ=1": (1.0, {"contrast": 1.0, "contrast_reference": "masked"}, {}),
    "masked Δ=1 γ=2": (1.0, {"contrast": 2.0, "contrast_reference": "masked"}, {}),
    "masked Δ=0.01 γ=1.5": (0.01, {"contrast": 1.5, "contrast_reference": "masked"}, {}),
    "contrast Δ=1 γ=4 α=0.1": (
        1.0,
        {"contrast": "auto", "contrast_reference": "plain"},
        {"AUTO_CONTRAST": 4.0, "AUTO_CONTRAST_DISTANCE": 0, "AUTO_PLAUSIBILITY": 0.1},
    ),
}


@contextlib.contextmanager
def auto_knobs(knobs: dict[str, Any]) -> Iterator[None]:
    """Set ``guide_engine.decoding``'s AUTO_* names for the block (the research knobs of ``"auto"``)."""
    from guide_engine import decoding

    saved = {name: getattr(decoding, name) for name in knobs}
    try:
        for name, value in knobs.items():
            setattr(decoding, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(decoding, name, value)


def conditions(task: str, output_deltas: Sequence[float], gammas: Sequence[float]) -> dict[str, tuple[Condition, dict]]:
    """Label → (how the instruction or question is written, the engine options)."""
    target = "instruction" if task == "french" else "question"

    def guide(delta: float) -> Condition:
        return Condition("guide", delta, target)

    table: dict[str, tuple[Condition, dict[str, Any]]] = {
        "raw": (Condition("raw"), {}),
        "guide Δ=1": (guide(1.0), {"delta_mid": 1.0}),
        "guide Δ=2": (guide(2.0), {"delta_mid": 2.0}),
    }
    for delta in output_deltas:
        table[f"output Δ={delta:g}"] = (guide(delta), {"delta_mid": delta, "delta_queries": "output"})
    for gamma in gammas:
        table[f"contrast Δ=1 γ={gamma:g}"] = (guide(1.0), {"delta_mid": 1.0, "contrast": gamma})
    return table


def contexts(task: str, length: int, n: int, count: Any, corpus: str = "python") -> list[str]:
    salt = FRENCH_SALT if task == "french" else NEEDLE_SALT
    paragraphs = prose_paragraphs() if corpus == "prose" else None
    return [build_context(length, s, count, salt=salt, paragraphs=paragraphs) for s in range(n)]


def prompt_for(task: str, context: str, condition: Condition, position: str, sample: int, length: int) -> str:
    if task == "french":
        return french_prompt(context, condition, position)
    depth = NEEDLE_DEPTHS[sample % len(NEEDLE_DEPTHS)]
    return needle_prompt(context, needle_code(sample, depth, length), depth, condition, position)


def succeeded(task: str, text: str, sample: int, length: int) -> bool:
    if task == "french":
        return is_french(text)
    depth = NEEDLE_DEPTHS[sample % len(NEEDLE_DEPTHS)]
    return contains_code(text, needle_code(sample, depth, length))


def key(task: str, length: int, position: str, label: str, sample: int, corpus: str = "python") -> str:
    """The French keys keep the first run's form, so ``--resume`` reuses its records."""
    prefix = "" if task == "french" else f"{task}|"
    prefix = prefix if corpus == "python" else f"{corpus}|{prefix}"
    return f"{prefix}{length}|{position}|{label}|{sample}"


def run(engine: Any, sink: Sink, args: argparse.Namespace) -> None:
    from guide_engine.decoding import emphasis_distance

    table = {label: (*entry, {}) for label, entry in conditions(args.task, args.output_deltas, args.gammas).items()}
    if args.auto_run:
        # 0.3's rule, which the report's `auto` rows look up: plain γ = 4 where far, GUIDE Δ = 1 near
        auto_03 = {"delta_mid": 1.0, "contrast": "auto", "contrast_reference": "plain"}
        table[f"{AUTO} (run)"] = (table["guide Δ=1"][0], auto_03, {})
    if args.conditions is not None:
        table = {label: entry for label, entry in table.items() if label in args.conditions}
    target = "instruction" if args.task == "french" else "question"
    for label in args.variants:
        delta, options, knobs = VARIANTS[label]
        table[label] = (Condition("guide", delta, target), {"delta_mid": delta, **options}, knobs)
    samples = [s for s in range(args.contexts) if ("tune" if s % 2 == 0 else "test") in args.halves]
    count = token_counter(engine)
    total = len(args.lengths) * len(samples) * len(args.positions) * len(table)
    progress = Progress(total, f"steering[{args.task}, {args.corpus}]")
    for length in args.lengths:
        texts = contexts(args.task, length, args.contexts, count, args.corpus)
        for position in args.positions:
            for label, (condition, options, knobs) in table.items():
                todo = [s for s in samples if key(args.task, length, position, label, s, args.corpus) not in sink.done]
                progress.step(len(samples) - len(todo), "(resumed)") if len(todo) < len(samples) else None
                for batch in chunks(todo, args.batch_size):
                    prompts = [prompt_for(args.task, texts[s], condition, position, s, length) for s in batch]
                    # Where the span ends counts for every condition, raw included (its tagged twin's).
                    span = Condition("guide", 1.0, target)
                    tagged = [prompt_for(args.task, texts[s], span, position, s, length) for s in batch]
                    with auto_knobs(knobs):
                        results = engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS[args.task], **options)
                    sink.add(
                        [
                            {
                                "key": key(args.task, length, position, label, s, args.corpus),
                                "corpus": args.corpus,
                                "task": args.task,
                                "length": length,
                                "position": position,
                                "condition": label,
                                "sample": s,
                                "half": "tune" if s % 2 == 0 else "test",
                                "prompt_tokens": result.prompt_tokens,
                                "distance": emphasis_distance(engine.encode(tagged_prompt, delta_mid=1.0)),
                                "text": result.text,
                                "success": succeeded(args.task, result.text, s, length),
                                "degenerate": is_degenerate(result.text),
                            }
                            for s, tagged_prompt, result in zip(batch, tagged, results)
                        ]
                    )
                    progress.step(len(batch), f"{length} {position} {label}")


def teacher_forced(engine: Any, sink: Sink, args: argparse.Namespace) -> None:
    """log P(French opening) − log P(English opening) per sample under raw, Δ = 1, 2 and each contrast."""
    from .scoring import ENGLISH_OPENING, FRENCH_OPENING, opening_ids, opening_logits, opening_logprob

    openings = [opening_ids(engine, FRENCH_OPENING), opening_ids(engine, ENGLISH_OPENING)]
    count = token_counter(engine)
    per_cell = args.contexts // 2 if args.test_half_only else args.contexts
    progress = Progress(len(args.lengths) * len(args.positions) * per_cell, "teacher-forced")
    guide = Condition("guide", 1.0)

    def score(pair: list[Any]) -> float:
        """log P(French opening) − log P(English opening) from the two openings' logits."""
        return opening_logprob(pair[0], openings[0]) - opening_logprob(pair[1], openings[1])

    for length in args.lengths:
        texts = contexts("french", length, args.contexts, count)
        for position in args.positions:
            wanted = range(1, args.contexts, 2) if args.test_half_only else range(args.contexts)
            todo = [s for s in wanted if key("tf", length, position, "all", s) not in sink.done]
            for s in todo:
                prompt = french_prompt(texts[s], guide, position)  # Δ = 0 is the raw prompt, token for token
                logits = {delta: opening_logits(engine, prompt, delta, openings) for delta in (0.0, 1.0, 2.0)}
                scores = {"raw": score(logits[0.0]), "guide Δ=1": score(logits[1.0]), "guide Δ=2": score(logits[2.0])}
                for gamma in args.gammas:
                    combined = [e + gamma * (e - p) for e, p in zip(logits[1.0], logits[0.0])]
                    scores[f"contrast Δ=1 γ={gamma:g}"] = score(combined)
                record = {
                    "key": key("tf", length, position, "all", s),
                    "length": length,
                    "position": position,
                    "sample": s,
                    "scores": scores,
                }
                sink.add([record])
                progress.step(1, f"{length} {position}")


def backfill_distances(engine: Any, sink: Sink, args: argparse.Namespace) -> None:
    """Give the first run's French records (written before ``distance`` existed) their distance."""
    from guide_engine.decoding import emphasis_distance

    missing = [r for r in sink.records if "distance" not in r]
    if not missing:
        return
    count = token_counter(engine)
    built: dict[tuple[int, int], str] = {}
    for record in missing:
        length, s = record["length"], record["sample"]
        if (length, s) not in built:
            built[(length, s)] = build_context(length, s, count, salt=FRENCH_SALT)
        prompt = french_prompt(built[(length, s)], Condition("guide", 1.0), record["position"])
        record["distance"] = emphasis_distance(engine.encode(prompt, delta_mid=1.0))
    sink.rewrite()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="french", choices=sorted(NEW_TOKENS))
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--positions", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--contexts", type=int, default=24, help="texts per cell (half tune, half test)")
    parser.add_argument("--output-deltas", type=float, nargs="*", default=[4.0])
    parser.add_argument("--gammas", type=float, nargs="*", default=[4.0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="benchmarks/results/steering")
    parser.add_argument("--fresh", action="store_true", help="start over (default: keep and skip finished records)")
    parser.add_argument("--teacher-forced", action="store_true", help="French task: the teacher-forced scores only")
    parser.add_argument("--test-half-only", action="store_true", help="teacher-forced scores of the test half only")
    parser.add_argument("--auto-run", action="store_true", help='also run contrast="auto" for real')
    parser.add_argument("--corpus", default="python", choices=CORPORA, help="python docs or the project's prose")
    parser.add_argument("--conditions", nargs="*", default=None, help="run only these fixed conditions")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS), help="issue 21's candidates")
    parser.add_argument("--halves", nargs="+", default=["tune", "test"], choices=["tune", "test"])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    sink = Sink(os.path.join(args.out, "records.jsonl"), resume=not args.fresh)
    scores = Sink(os.path.join(args.out, "teacher_forced.jsonl"), resume=not args.fresh)
    runs = Sink(os.path.join(args.out, "runs.jsonl"), resume=True)
    if not args.report_only:
        import torch

        from guide_engine import GuideEngine

        torch.set_num_threads(args.threads)
        started = time.time()
        engine = GuideEngine.from_pretrained(None)
        backfill_distances(engine, sink, args)
        if args.teacher_forced:
            teacher_forced(engine, scores, args)
        else:
            run(engine, sink, args)
        minutes = (time.time() - started) / 60
        command = "python -m benchmarks.quality.steering " + shlex.join(sys.argv[1:])
        runs.add([{"key": f"{len(runs.records)}", "command": command, "minutes": round(minutes, 1)}])
        print(f"ran in {minutes:.1f} min", file=sys.stderr)
    markdown, data = report(sink.records, scores.records, runs.records)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown + "\n")
    plot(sink.records, os.path.join(args.out, "success_rate.png"))
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump({"cells": data}, handle, indent=2, ensure_ascii=False)
    print(markdown)


if __name__ == "__main__":
    main()
