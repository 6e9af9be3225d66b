"""Task 1 and 3: "Summarize this text in French" over English texts, and Influence against success.

For every context length, sample, instruction position and condition:

* greedy generation (``max_new_tokens`` tokens), scored by langdetect (French or not) and the
  repetition test of :mod:`.metrics` (degenerate or not);
* two teacher-forced passes, no generation: log P("Voici un résumé") with the Influence of the
  instruction riding along, and log P("Here is a summary") with attention rollout riding along.
  Their difference is the cheap French score; the Influence and rollout at the last prompt
  tokens are the predictors of success (task 3).

Prompts of one length and condition are generated as one batch, since the batch shares Δ.
"""

from __future__ import annotations

from typing import Any

from .data import Condition, build_context, french_prompt
from .metrics import is_degenerate, is_french, language, repeated_ngram_ratio
from .runner import Grid, Progress, Sink, chunks, token_counter
from .scoring import ENGLISH_OPENING, FRENCH_OPENING, measure, opening_ids

FRENCH_SALT = 0


def french_conditions(deltas: tuple[float, ...]) -> list[Condition]:
    """raw, "Important: …", UPPERCASE, then GUIDE with each Δ on the instruction."""
    return [Condition("raw"), Condition("important"), Condition("upper")] + [Condition("guide", d) for d in deltas]


def run_french(
    engine: Any,
    grid: Grid,
    sink: Sink,
    *,
    model_name: str,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    measure_influence: bool = True,
    measure_max_length: int | None = None,
) -> None:
    """Run the grid; every finished batch is appended to ``sink`` (already finished keys are skipped).

    Prompts of one length and condition (all samples, both positions) form one batch, since a
    batch shares Δ. The teacher-forced and Influence passes (two forwards per prompt) run up to
    ``measure_max_length`` tokens of context (all lengths when ``None``).
    """
    conditions = french_conditions(grid.deltas)
    count = token_counter(engine)
    fr_ids, en_ids = opening_ids(engine, FRENCH_OPENING), opening_ids(engine, ENGLISH_OPENING)
    total = sum(grid.samples.values()) * len(conditions) * len(grid.positions)
    progress = Progress(total, f"french[{model_name}]")
    for length, n_samples in sorted(grid.samples.items()):
        contexts = [build_context(length, s, count, salt=FRENCH_SALT) for s in range(n_samples)]
        cells = [(s, p) for s in range(n_samples) for p in grid.positions]
        measured = measure_influence and (measure_max_length is None or length <= measure_max_length)
        for condition in conditions:
            keys = {c: _key(model_name, length, c[0], c[1], condition) for c in cells}
            todo = [c for c in cells if keys[c] not in sink.done]
            if len(todo) < len(cells):
                progress.step(len(cells) - len(todo), "(resumed)")
            for batch in chunks(todo, batch_size):
                prompts = [french_prompt(contexts[s], condition, p) for s, p in batch]
                results = engine.generate_batch(
                    prompts, max_new_tokens=max_new_tokens, delta_mid=condition.delta or None
                )
                records = []
                for (s, position), result in zip(batch, results):
                    record = {
                        "key": keys[(s, position)],
                        "task": "french",
                        "model": model_name,
                        "length": length,
                        "sample": s,
                        "position": position,
                        "condition": condition.label,
                        "name": condition.name,
                        "delta": condition.delta,
                        "prompt_tokens": result.prompt_tokens,
                        "output": result.text,
                        "language": language(result.text),
                        "french": is_french(result.text),
                        "ngram_ratio": repeated_ngram_ratio(result.text),
                        "degenerate": is_degenerate(result.text),
                    }
                    if measured:
                        record.update(_measures(engine, contexts[s], condition, position, fr_ids, en_ids))
                    records.append(record)
                sink.add(records)
                progress.step(len(batch), f"L={length} {condition.label}")


def _measures(
    engine: Any, context: str, condition: Condition, position: str, fr_ids: list[int], en_ids: list[int]
) -> dict:
    prompt = french_prompt(context, condition, position, measure=True)
    fr = measure(engine, prompt, condition.delta, fr_ids, "influence")
    en = measure(engine, prompt, condition.delta, en_ids, "attention_rollout")
    return {
        "logprob_fr": fr.logprob,
        "logprob_en": en.logprob,
        "influence_last": fr.last_layer,
        "influence_mean": fr.mean_layers,
        "rollout_last": en.last_layer,
        "rollout_mean": en.mean_layers,
        "last_k": fr.k,
    }


def _key(model: str, length: int, sample: int, position: str, condition: Condition) -> str:
    return f"french|{model}|{length}|{sample}|{position}|{condition.label}"
