"""Does emphasis help on IFEval? Untagged against tagged instructions, scored by IFEval's checkers (issue 26).

    python -m benchmarks.quality.ifeval [--model smollm2] [--conditions untagged default]
        [--halves odd even] [--max-new-tokens 512] [--batch-size 8] [--threads 1] [--limit N]
        [--out benchmarks/results/ifeval] [--fresh] [--report-only]

Each prompt of IFEval (``ifeval_data/input_data.jsonl``) goes to the engine as one user message
through the model's chat template, greedy, ``--batch-size`` rows a batch (``generate_batch``, rows
of similar length together). A condition is a prompt form and engine options
(:data:`CONDITIONS`): ``untagged`` is the prompt as IFEval has it; the others tag its instruction
sentences by :func:`.ifeval_tagging.tag_prompt` and set Δ or a contrast mode.

Keys are split by parity: the **even** half tunes (screening of candidates), the **odd** half is
the reported one. Halves run in the order given, conditions in the order given inside each half.

One record per (model, condition, key) in ``--out/records.jsonl``, with the fields of issue 26:
``tagged_prompt`` and ``options`` reproduce ``response`` through
``engine.generate([{"role": "user", "content": tagged_prompt}], **options)``. A tagged condition
whose rule finds no instruction sentence outside the task has the untagged prompt: its record
copies the untagged answer (``copied_from``), since a prompt without spans decodes exactly as
untagged under every condition. Runs resume by default (``--fresh`` starts over), and each run's
command, time and record count go to ``runs.jsonl``. ``--report-only`` (and every run's end)
rebuilds ``report.md``, ``summary.json`` and ``accuracy.png`` from the records alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .ifeval_scoring import IFEvalPrompt, load_prompts, score  # noqa: E402
from .ifeval_tagging import tag_prompt, untagged_prompt  # noqa: E402
from .metrics import is_degenerate, repeated_ngram_ratio  # noqa: E402
from .runner import Progress, Sink, chunks  # noqa: E402

OUT = os.path.join("benchmarks", "results", "ifeval")
MAX_NEW_TOKENS = 512

# label → (whether the instruction sentences are tagged, the engine options besides the budget)
CONDITIONS: dict[str, tuple[bool, dict[str, Any]]] = {
    "untagged": (False, {}),
    "default": (True, {"delta_mid": 1.0}),
    "Δ=2": (True, {"delta_mid": 2.0}),
    "auto": (True, {"delta_mid": 1.0, "contrast": "auto"}),
    "masked γ=1": (True, {"delta_mid": 1.0, "contrast": 1.0, "contrast_reference": "masked"}),
    "masked γ=2": (True, {"delta_mid": 1.0, "contrast": 2.0, "contrast_reference": "masked"}),
    "output Δ=1": (True, {"delta_mid": 1.0, "delta_queries": "output"}),
}


def identity(record: dict[str, Any]) -> tuple[str, str, int]:
    """What a record answers: (model, condition, key)."""
    return record["model"], record["condition"], record["key"]


def prompt_for(item: IFEvalPrompt, condition: str) -> str:
    """The text given to the engine under ``condition`` (tags included)."""
    tagged, _ = CONDITIONS[condition]
    return tag_prompt(item.prompt) if tagged else untagged_prompt(item.prompt)


def options_for(condition: str, max_new_tokens: int) -> dict[str, Any]:
    """The engine's keyword arguments under ``condition``: greedy, the budget, the condition's own."""
    return {"max_new_tokens": max_new_tokens, "temperature": 0.0, **CONDITIONS[condition][1]}


def record_for(
    model: str, condition: str, item: IFEvalPrompt, tagged_prompt: str, options: dict[str, Any], answer: dict[str, Any]
) -> dict[str, Any]:
    """One record: the request, the answer (``response``, ``finish_reason``…) and IFEval's verdicts."""
    response = answer["response"]
    return {
        "model": model,
        "condition": condition,
        "key": item.key,
        "half": item.half,
        "tagged_prompt": tagged_prompt,
        "options": options,
        **answer,
        "instruction_id_list": list(item.instruction_id_list),
        **score(item, response),
        "words": len(response.split()),
        "repeated_ngram_ratio": round(repeated_ngram_ratio(response), 4),
        "degenerate": is_degenerate(response),
    }


def run(engine: Any, sink: Sink, args: argparse.Namespace, log: Any) -> None:
    items = load_prompts()
    by_half = {half: [i for i in items if i.half == half] for half in args.halves}
    plan = []
    for half in args.halves:
        for condition in args.conditions:
            todo = [i for i in by_half[half] if (args.model, condition, i.key) not in sink.done]
            plan.append((condition, todo[: args.limit] if args.limit else todo))
    progress = Progress(sum(len(todo) for _, todo in plan), f"ifeval[{args.model}]")
    for condition, todo in plan:
        options = options_for(condition, args.max_new_tokens)
        prompts = {i.key: prompt_for(i, condition) for i in todo}
        copies = []
        if CONDITIONS[condition][0]:
            plain = {r["key"]: r for r in sink.records if r["model"] == args.model and r["condition"] == "untagged"}
            for item in todo:
                source = plain.get(item.key)
                if (
                    source
                    and source["tagged_prompt"] == prompts[item.key]
                    and source["options"] == options_for("untagged", args.max_new_tokens)
                ):
                    answer = {name: source[name] for name in ANSWER_FIELDS} | {"copied_from": "untagged"}
                    copies.append(record_for(args.model, condition, item, prompts[item.key], options, answer))
        if copies:
            sink.add(copies)
            progress.step(len(copies), f"{condition} (copied: no instruction sentence outside the task)")
        rest = sorted((i for i in todo if (args.model, condition, i.key) not in sink.done), key=lambda i: len(i.prompt))
        for batch in chunks(rest, args.batch_size):
            started = time.time()
            results = engine.generate_batch([prompts[i.key] for i in batch], **options)
            seconds = round(time.time() - started, 1)
            records = []
            for item, result in zip(batch, results):
                answer = {
                    "response": result.text,
                    "finish_reason": result.finish_reason,
                    "completion_tokens": result.completion_tokens,
                    "prompt_tokens": result.prompt_tokens,
                    "batch_seconds": seconds,
                    "batch_rows": len(batch),
                }
                records.append(record_for(args.model, condition, item, prompts[item.key], options, answer))
            sink.add(records)
            log(len(records))
            progress.step(len(batch), f"{condition} ({seconds:.0f} s a batch)")


ANSWER_FIELDS = ("response", "finish_reason", "completion_tokens", "prompt_tokens", "batch_seconds", "batch_rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.ifeval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (embedded), gemma3-270m, or a path / hub id")
    parser.add_argument("--conditions", nargs="+", default=["untagged", "default"], choices=list(CONDITIONS))
    parser.add_argument("--halves", nargs="+", default=["odd", "even"], choices=["odd", "even"])
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="the token budget of an answer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--limit", type=int, default=None, help="at most N new prompts per (half, condition)")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--fresh", action="store_true", help="start over (default: keep and skip finished records)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the records")
    args = parser.parse_args(argv)

    sink = Sink(os.path.join(args.out, "records.jsonl"), resume=not args.fresh, identity=identity)
    runs = Sink(os.path.join(args.out, "runs.jsonl"), resume=True)
    if not args.report_only:
        import torch

        from .models import load_engine

        torch.set_num_threads(args.threads)
        command = "python -m benchmarks.quality.ifeval " + shlex.join(sys.argv[1:] if argv is None else argv)
        started = time.time()
        entry = {
            "key": f"{len(runs.records)}",
            "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "device": "cpu",
            "threads": args.threads,
            "torch": torch.__version__,
            "minutes": 0.0,
            "records_added": 0,
        }
        runs.add([entry])
        engine = load_engine(args.model)

        def log(added: int) -> None:
            entry["minutes"] = round((time.time() - started) / 60, 1)
            entry["records_added"] += added
            runs.rewrite()

        run(engine, sink, args, log)
        log(0)
        print(f"ran in {entry['minutes']:.1f} min", file=sys.stderr)
    from .ifeval_report import write_report

    print(f"report: {write_report(sink.records, runs.records, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
