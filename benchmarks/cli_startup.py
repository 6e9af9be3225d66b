"""How long ``guide --help`` and ``guide --version`` take, against ``python -c "import typer"``.

Every command runs in a fresh interpreter, ``--repeats`` times, interleaved (typer, help, version,
typer, help, …) so that load on the machine hits all alike; the report gives the best and the
median wall time of each and the ratio of medians to ``import typer``. The goal (issue 19): ``guide
--help`` takes at most 1.5× ``import typer``, which holds because it imports neither torch nor the
engine. ``guide generate --help`` (which does import them) is timed a few times for comparison.

    python benchmarks/cli_startup.py --out benchmarks/results/cli_startup
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, markdown_table, median, write_report

GOAL = 1.5  # guide --help may take at most this many times `python -c "import typer"`


def guide_command() -> list[str]:
    """The installed ``guide`` script beside this interpreter (not a shim that starts another program)."""
    beside = Path(sys.executable).with_name("guide")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("guide")
    if found is None:
        raise SystemExit("the `guide` console script is not installed; run `pip install -e .`")
    return [found]


def wall_seconds(command: list[str]) -> float:
    """Wall time of one run of ``command``; a failing command stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}: {done.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="runs of each fast command")
    parser.add_argument("--engine-repeats", type=int, default=3, help="runs of `guide generate --help` (0: none)")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()

    guide = guide_command()
    fast = {
        'python -c "import typer"': [sys.executable, "-c", "import typer"],
        "guide --help": [*guide, "--help"],
        "guide --version": [*guide, "--version"],
    }
    times: dict[str, list[float]] = {name: [] for name in fast}
    for command in fast.values():  # one untimed run each: the file cache, .pyc files
        wall_seconds(command)
    for _ in range(args.repeats):
        for name, command in fast.items():
            times[name].append(wall_seconds(command))
    if args.engine_repeats:
        times["guide generate --help"] = [
            wall_seconds([*guide, "generate", "--help"]) for _ in range(args.engine_repeats)
        ]

    baseline = median(times['python -c "import typer"'])
    rows, results = [], {}
    for name, values in times.items():
        results[name] = {"runs": values, "best_s": min(values), "median_s": median(values)}
        results[name]["median_vs_import_typer"] = median(values) / baseline
        rows.append(
            [
                f"`{name}`",
                len(values),
                f"{min(values):.3f}",
                f"{median(values):.3f}",
                f"{median(values) / baseline:.2f}×",
            ]
        )
    ratio = results["guide --help"]["median_vs_import_typer"]
    verdict = f"guide --help / import typer = {ratio:.2f} (goal ≤ {GOAL}): {'met' if ratio <= GOAL else 'NOT met'}"
    info = machine_info(threads=1)
    info.pop("torch_threads")  # no torch in the timed commands
    data = {"machine": info, "command": guide, "goal": GOAL, "goal_met": ratio <= GOAL, "results": results}
    markdown = "\n\n".join(
        [
            "# `guide` start-up: `--help` and `--version` against `import typer`",
            f"Measured {info['date']} on {info['cpu']} ({info['cpu_count']} cores, "
            f"load {info['load_average_at_start']}), Python {info['python']}; each command in a fresh interpreter, "
            f"interleaved; wall time in seconds. `guide` is `{' '.join(guide)}`. "
            "Command: `python benchmarks/cli_startup.py --out benchmarks/results/cli_startup`.",
            markdown_table(["command", "runs", "best s", "median s", "median / import typer"], rows),
            verdict + ".",
        ]
    )
    print(markdown)
    write_report(args.out, data, markdown)


if __name__ == "__main__":
    main()
