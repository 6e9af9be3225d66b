"""``python -m benchmarks.quality [--quick] [--out DIR]``: does GUIDE's emphasis help a small model?

Runs the "summarize in French" task (with Influence against success) and the needle in a
haystack, writes one JSONL record per prompt, then a Markdown report with tables, Wilson
intervals, paired tests, the recommended Δ and plots. ``--resume`` continues an interrupted run;
``--report-only`` rebuilds the report from the records. The two tasks can run as two processes
into the same ``--out`` folder (``--tasks french`` and ``--tasks needle``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .runner import Grid, Sink  # noqa: E402

FRENCH_DELTAS = (0.5, 1.0, 2.0, 3.0, 5.0)
NEEDLE_DELTAS = (0.25, 0.5, 1.0, 2.0)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)

# Each preset: (French grid, needle grid, French max context for the teacher-forced/Influence passes).
PRESETS = {
    "quick": (
        Grid({128: 2}, deltas=(1.0, 2.0)),
        Grid({256: 1}, deltas=(1.0,), depths=(0.0, 0.5, 1.0)),
        None,
    ),
    # The grid of the README: about 80 minutes per task on a busy shared 2-core CPU, with the
    # two tasks as two single-threaded processes side by side.
    "full": (
        Grid({128: 4, 512: 6, 1024: 4, 2048: 1, 4096: 1}, deltas=FRENCH_DELTAS),
        Grid(
            {256: 1, 512: 1, 1024: 1, 2048: 1, 4096: 1},
            deltas=NEEDLE_DELTAS,
            depths=DEPTHS,
            depths_by_length={512: (0.0, 0.5, 1.0), 1024: (0.0, 0.5, 1.0), 2048: (0.5,), 4096: (0.5,)},
        ),
        512,
    ),
    # A second model on the shortest lengths only.
    "reduced": (
        Grid({128: 3}, deltas=(1.0, 2.0, 5.0)),
        Grid({256: 1}, deltas=(0.5, 1.0, 2.0), depths=(0.0, 0.5, 1.0)),
        None,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Does GUIDE's emphasis help? Summarize-in-French and needle-in-a-haystack benchmark.",
    )
    parser.add_argument("--quick", action="store_true", help="the 'quick' preset: a few minutes")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="grid size (default: full, or quick with --quick)"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: benchmarks/results/quality/<model>-<preset>)"
    )
    parser.add_argument("--model", default="smollm2", help="smollm2 (embedded), gemma3-270m, or a path / hub id")
    parser.add_argument("--tasks", nargs="+", choices=("french", "needle"), default=["french", "needle"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--french-samples", type=_samples, default=None, help="override the preset, e.g. 512:6,1024:4")
    parser.add_argument("--needle-samples", type=_samples, default=None, help="override the preset, e.g. 256:2")
    parser.add_argument("--resume", action="store_true", help="keep the records already in --out and skip them")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from --out")
    args = parser.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    out = args.out or os.path.join("benchmarks", "results", "quality", f"{args.model.replace('/', '_')}-{preset}")
    os.makedirs(out, exist_ok=True)
    if not args.report_only:
        run(args, preset, out, "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv))
    from .report import write_report

    path = write_report(out)
    print(f"report: {path}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace, preset: str, out: str, command: str) -> None:
    import torch

    from .french import run_french
    from .models import load_engine
    from .needle import run_needle

    torch.set_num_threads(args.threads)
    started = time.time()
    engine = load_engine(args.model)
    loaded = time.time() - started
    french_grid, needle_grid, measure_max = PRESETS[preset]
    if args.french_samples:
        french_grid = dataclasses.replace(french_grid, samples=args.french_samples)
    if args.needle_samples:
        needle_grid = dataclasses.replace(needle_grid, samples=args.needle_samples)
    for task in args.tasks:
        task_start = time.time()
        sink = Sink(os.path.join(out, f"{task}.jsonl"), resume=args.resume)
        if task == "french":
            run_french(
                engine,
                french_grid,
                sink,
                model_name=args.model,
                batch_size=args.batch_size,
                measure_max_length=measure_max,
            )
        else:
            run_needle(engine, needle_grid, sink, model_name=args.model, batch_size=args.batch_size)
        meta_path = os.path.join(out, f"run_{task}.json")
        earlier = 0.0
        if args.resume and os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as handle:
                earlier = float(json.load(handle).get("task_seconds", 0.0))
        meta = {
            "task": task,
            "model": args.model,
            "preset": preset,
            "command": command,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "load_seconds": round(loaded, 1),
            "task_seconds": round(earlier + time.time() - task_start, 1),  # summed over resumed runs
            "records": len(sink.records),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torch": torch.__version__,
        }
        with open(meta_path, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)


def _samples(text: str) -> dict[int, int]:
    """``"512:6,1024:4"`` → ``{512: 6, 1024: 4}`` (context length: number of samples)."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        samples = {int(length): int(count) for length, count in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LENGTH:SAMPLES[,LENGTH:SAMPLES…], e.g. 512:6,1024:4; got {text!r}"
        ) from None
    if not samples or any(n < 1 or k < 1 for n, k in samples.items()):
        raise argparse.ArgumentTypeError(f"lengths and sample counts must be positive integers, got {text!r}")
    return samples


if __name__ == "__main__":
    sys.exit(main())
