"""Task 2: a needle in a haystack ("The secret code of the blue door is NNNN.").

The needle sits at a depth of 0–100 % of an English haystack; the question comes before or after
the haystack. Conditions: no emphasis, GUIDE on the question, GUIDE on the needle. Success is an
exact match: the code appears as a whole number in the greedy answer.

Only emphasis on the question is available to a real user: they wrote the question, but they do
not know where in a retrieved document the answer is. Emphasis on the needle is an oracle upper
bound (the paper's setting).
"""

from __future__ import annotations

from typing import Any

from .data import Condition, build_context, needle_code, needle_prompt
from .metrics import contains_code
from .runner import Grid, Progress, Sink, chunks, token_counter

NEEDLE_SALT = 500  # haystacks start elsewhere in the corpus than the French contexts


def needle_conditions(deltas: tuple[float, ...]) -> list[Condition]:
    """No emphasis, then each Δ on the question, then each Δ on the needle."""
    return (
        [Condition("raw")]
        + [Condition("guide", d, "question") for d in deltas]
        + [Condition("guide", d, "needle") for d in deltas]
    )


def run_needle(
    engine: Any,
    grid: Grid,
    sink: Sink,
    *,
    model_name: str,
    max_new_tokens: int = 20,
    batch_size: int = 8,
) -> None:
    """Run the grid; every finished batch is appended to ``sink`` (already finished keys are skipped).

    Prompts of one length and condition (all samples, depths and positions) are batched together.
    """
    conditions = needle_conditions(grid.deltas)
    count = token_counter(engine)
    lengths = sorted(grid.samples)
    total = sum(grid.samples[n] * len(grid.depths_for(n)) for n in lengths) * len(conditions) * len(grid.positions)
    progress = Progress(total, f"needle[{model_name}]")
    for length in lengths:
        depths = grid.depths_for(length)
        haystacks = {s: build_context(length, s, count, salt=NEEDLE_SALT) for s in range(grid.samples[length])}
        cells = [(s, d, p) for s in range(grid.samples[length]) for d in range(len(depths)) for p in grid.positions]
        for condition in conditions:
            keys = {c: _key(model_name, length, c[0], depths[c[1]], c[2], condition) for c in cells}
            todo = [c for c in cells if keys[c] not in sink.done]
            if len(todo) < len(cells):
                progress.step(len(cells) - len(todo), "(resumed)")
            for batch in chunks(todo, batch_size):
                codes = [needle_code(s, depths[d], length) for s, d, _ in batch]
                prompts = [
                    needle_prompt(haystacks[s], code, depths[d], condition, p) for (s, d, p), code in zip(batch, codes)
                ]
                results = engine.generate_batch(
                    prompts, max_new_tokens=max_new_tokens, delta_mid=condition.delta or None
                )
                sink.add(
                    [
                        {
                            "key": keys[(s, d, p)],
                            "task": "needle",
                            "model": model_name,
                            "length": length,
                            "sample": s,
                            "depth": depths[d],
                            "position": p,
                            "condition": condition.label,
                            "name": condition.name,
                            "target": condition.target if condition.name == "guide" else "none",
                            "delta": condition.delta,
                            "prompt_tokens": result.prompt_tokens,
                            "code": code,
                            "output": result.text,
                            "correct": contains_code(result.text, code),
                        }
                        for (s, d, p), code, result in zip(batch, codes, results)
                    ]
                )
                progress.step(len(batch), f"L={length} {condition.label}")


def _key(model: str, length: int, sample: int, depth: float, position: str, condition: Condition) -> str:
    return f"needle|{model}|{length}|{sample}|{depth:g}|{position}|{condition.label}"
