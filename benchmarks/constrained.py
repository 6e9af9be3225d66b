"""Per-step cost of constrained decoding (llguidance token masks) against unconstrained decoding.

Two variants on the embedded SmolLM2-135M-Instruct, interleaved in one run (the order alternates
from one repetition to the next):

* ``free``: ``decode_steps`` without a grammar;
* ``json``: the same loop with a JSON-schema grammar (one ``llguidance.LLMatcher`` per row): each
  step computes the row's token mask, sets forbidden logits to ``-inf`` and feeds the chosen token
  to the matcher.

The schema (an object holding a long list of strings) never completes within ``--steps``, so both
variants decode exactly ``--steps`` tokens over the same prompt; a step's cost depends on the
cache length, not on which token was chosen. Reported: the median time of one decoding step
(prefill excluded) per variant, and their ratio. Goal (issue 10): at most 1.10x per step.

    python benchmarks/constrained.py --steps 48 --repeats 5 --threads 1 --out benchmarks/results/constrained/constrained
"""

from __future__ import annotations

import argparse
import time

from common import machine_info, markdown_table, median, set_threads, write_report

from guide_engine import shared_engine
from guide_engine.constraints import json_schema_grammar
from guide_engine.decoding import decode_steps, left_pad
from guide_engine.options import SamplingConfig

SCHEMA = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string"}}},
    "required": ["notes"],
}
PROMPT = [{"role": "user", "content": "List notes about the history of the bicycle, as JSON."}]


def step_times(engine, ids, mask, steps: int, grammar: str | None) -> list[float]:
    """Seconds of each decoding step after the prefill (the first yield is the prefill's token)."""
    masks = engine.grammars.masks([engine.grammars.matcher(grammar)]) if grammar else None
    times, last = [], time.perf_counter()
    loop = decode_steps(engine.model, ids, mask, None, SamplingConfig(), steps + 1, engine.pad_id, grammar_masks=masks)
    for i, _ in enumerate(loop):
        now = time.perf_counter()
        if i > 0:
            times.append(now - last)
        last = now
    if len(times) != steps:
        raise RuntimeError(f"expected {steps} decoding steps, got {len(times)}: the grammar ended early")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48, help="decoding steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    set_threads(args.threads)
    engine = shared_engine()
    encoded = engine.encode(PROMPT)
    ids, mask = left_pad([encoded.input_ids], engine.pad_id, engine.model.device)
    grammar = json_schema_grammar(SCHEMA)
    started = time.perf_counter()
    engine.grammars.lltokenizer()
    tokenizer_seconds = time.perf_counter() - started
    step_times(engine, ids, mask, 4, grammar)  # warm-up
    step_times(engine, ids, mask, 4, None)
    runs: dict[str, list[float]] = {"free": [], "json": []}
    for repeat in range(args.repeats):
        order = ("free", "json") if repeat % 2 == 0 else ("json", "free")
        for variant in order:
            times = step_times(engine, ids, mask, args.steps, grammar if variant == "json" else None)
            runs[variant].append(median(times))
    free, constrained = median(runs["free"]), median(runs["json"])
    ratio = constrained / free
    data = {
        "machine": machine_info(args.threads),
        "settings": {"steps": args.steps, "repeats": args.repeats, "prompt_tokens": len(encoded.input_ids)},
        "schema": SCHEMA,
        "lltokenizer_build_seconds": round(tokenizer_seconds, 3),
        "median_step_seconds_per_run": runs,
        "median_step_seconds": {"free": free, "json": constrained},
        "ratio": ratio,
        "goal": 1.10,
    }
    table = markdown_table(
        ["variant", "median ms / step", "ratio to free"],
        [
            ["unconstrained", f"{free * 1e3:.2f}", "1.00"],
            ["JSON schema (llguidance)", f"{constrained * 1e3:.2f}", f"{ratio:.3f}"],
        ],
    )
    markdown = (
        f"### Constrained decoding, per decoding step (SmolLM2-135M, {args.threads} thread(s), "
        f"{len(encoded.input_ids)}-token prompt, {args.steps} steps x {args.repeats} runs each)\n\n"
        f"{table}\n\nGoal: at most 1.10x. Building llguidance's tokenizer once per engine: "
        f"{tokenizer_seconds:.2f} s."
    )
    print(markdown)
    write_report(args.out, data, markdown)


if __name__ == "__main__":
    main()
