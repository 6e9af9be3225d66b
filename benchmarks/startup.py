"""Model start: a warm ``GuideEngine.from_pretrained()`` against a plain load of the same folder.

Each load runs in a fresh Python process (nothing cached in memory), the variants interleaved and
their order rotated every round, so a busy neighbour slows them alike:

- ``guide``: ``GuideEngine.from_pretrained()``, the embedded model from its converted folder (warm:
  the folder exists; the GGUF file's content hash is still computed to find it);
- ``plain``: ``AutoTokenizer.from_pretrained(folder)`` and ``AutoModelForCausalLM.from_pretrained(folder)``
  of that folder, stock attention: the goal's reference. ``guide_engine`` is imported first, unused,
  so both timed spans start with the same modules loaded (transformers imports lazily: without it, a
  plain load pays for importing the modeling code inside ``from_pretrained``);
- ``bare``: the same plain load with only transformers imported, as a script without guide would
  run it (its whole process is the fair reference for the whole ``guide`` process);
- ``gguf``: the old path, tokenizer and model read from the GGUF file with ``"guide"`` attention and
  wrapped in a ``GuideEngine`` (fewer rounds: it is slow);
- ``first``: once, the first use in an empty cache: conversion with its progress, then the load.

The timed span is the load alone, after the imports; the imports and the whole process are reported
beside it. Goal (issue 19): guide / plain ≤ 1.5 in medians.

    python benchmarks/startup.py --repeat 7 --out benchmarks/results/startup
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, markdown_table, median, write_report  # noqa: E402

GOAL = 1.5

PRELUDE = """
import json, sys, time
started = time.perf_counter()
"""

CODES = {
    "guide": """
from guide_engine import GuideEngine
imported = time.perf_counter()
engine = GuideEngine.from_pretrained()
""",
    "plain": """
import guide_engine  # unused: the same modules as guide's when the clock starts
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
""",
    "bare": """
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
""",
    "gguf": """
from guide_engine import GuideEngine
from guide_engine.loading import embedded_model_location
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
folder, gguf = embedded_model_location()
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, attn_implementation="guide")
engine = GuideEngine(model, tokenizer)
""",
}
CODES["first"] = CODES["guide"]

EPILOGUE = """
loaded = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported}))
"""


def run_once(variant: str, folder: str, env: dict[str, str]) -> dict[str, float]:
    """One fresh process loading the model as ``variant`` does; its timings."""
    code = PRELUDE + CODES[variant] + EPILOGUE
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, folder], capture_output=True, text=True, env=env, check=False, timeout=900
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    result["stderr_lines"] = sum(1 for line in done.stderr.splitlines() if line.startswith("guide: "))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds of guide, plain and bare")
    parser.add_argument("--gguf-repeat", type=int, default=3, help="rounds that also run the old GGUF path (0: none)")
    parser.add_argument("--no-first", action="store_true", help="skip the first-use run (conversion, ~30 s)")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()

    from guide_engine.loading import converted_gguf_folder, embedded_model_location

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    info = machine_info(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    folder = converted_gguf_folder(*embedded_model_location())  # warm the cache (converts if needed)
    print(f"converted folder: {folder}", file=sys.stderr)

    samples: dict[str, list[dict[str, float]]] = {"guide": [], "plain": [], "bare": [], "gguf": []}
    for round_ in range(args.repeat):
        variants = ["guide", "plain", "bare"] + (["gguf"] if round_ < args.gguf_repeat else [])
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:  # rotate the order every round
            samples[variant].append(run_once(variant, folder, env))
            print(f"round {round_ + 1}: {variant} {samples[variant][-1]['load_s']:.2f} s", file=sys.stderr)
    first = None
    if not args.no_first:
        with tempfile.TemporaryDirectory() as empty:
            first = run_once("first", folder, {**env, "GUIDE_CACHE": empty})
        print(f"first use: {first['load_s']:.1f} s, {first['stderr_lines']} progress lines", file=sys.stderr)

    def summary(values: list[dict[str, float]]) -> dict[str, Any]:
        return {
            key: {"median": median([v[key] for v in values]), "min": min(v[key] for v in values)}
            for key in ("load_s", "import_s", "process_s")
        } | {"n": len(values), "load_s_all": [round(v["load_s"], 3) for v in values]}

    stats = {variant: summary(values) for variant, values in samples.items() if values}
    ratio = stats["guide"]["load_s"]["median"] / stats["plain"]["load_s"]["median"]
    process_ratio = stats["guide"]["process_s"]["median"] / stats["bare"]["process_s"]["median"]
    load_after = os.getloadavg()
    data = {
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in load_after],
        "folder": folder,
        "variants": stats,
        "first_use": first,
        "ratio_guide_to_plain": ratio,
        "process_ratio_guide_to_bare": process_ratio,
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
    }
    names = {
        "guide": "`GuideEngine.from_pretrained()`, warm (the converted folder)",
        "plain": "plain `AutoTokenizer` + `AutoModelForCausalLM.from_pretrained(folder)`, same imports",
        "bare": "the same plain load, only transformers imported",
        "gguf": "before: tokenizer and model from the GGUF file, wrapped in `GuideEngine`",
    }
    rows = [
        [
            names[v],
            s["n"],
            f"{s['load_s']['median']:.2f}",
            f"{s['load_s']['min']:.2f}",
            f"{s['import_s']['median']:.2f}",
            f"{s['process_s']['median']:.2f}",
        ]
        for v, s in stats.items()
    ]
    if first is not None:
        rows.append(
            [
                "first use, empty cache: conversion (with progress), then the load",
                1,
                f"{first['load_s']:.2f}",
                f"{first['load_s']:.2f}",
                f"{first['import_s']:.2f}",
                f"{first['process_s']:.2f}",
            ]
        )
    table = markdown_table(["load", "n", "load s (median)", "load s (min)", "import s", "process s"], rows)
    markdown = "\n".join(
        [
            "# Model start",
            "",
            "`python benchmarks/startup.py` — each load in a fresh process, the variants interleaved "
            "(order rotated every round); *load* is `from_pretrained` alone, after the imports; *process* is "
            "the whole `python -c` run.",
            "",
            table,
            "",
            f"**warm `GuideEngine.from_pretrained()` / plain load of the folder: {ratio:.2f}** "
            f"(goal ≤ {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}). Whole processes, `guide` against "
            f"`bare` (imports included): {process_ratio:.2f}.",
            "",
            f"{info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']}, transformers "
            f"{info['transformers']}; load average {info['load_average_at_start']} at the start, "
            f"{data['load_average_at_end']} at the end ({info['date']}).",
        ]
    )
    print(markdown)
    write_report(args.out, data, markdown)


if __name__ == "__main__":
    main()
