"""What the two tasks share: the grid, the JSONL sink with resume, batching and progress lines."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Grid:
    """How many samples each context length gets, and the other axes of a task.

    Attributes:
        samples: context length (tokens) → number of texts at that length.
        positions: ``"before"`` and/or ``"after"`` (instruction or question relative to the text).
        deltas: Δ values of the GUIDE conditions.
        depths: needle depths (0–1); unused by the French task.
        depths_by_length: a shorter depth list for some lengths (to fit the time budget).
    """

    samples: dict[int, int]
    positions: tuple[str, ...] = ("before", "after")
    deltas: tuple[float, ...] = ()
    depths: tuple[float, ...] = ()
    depths_by_length: dict[int, tuple[float, ...]] = field(default_factory=dict)

    def depths_for(self, length: int) -> tuple[float, ...]:
        return self.depths_by_length.get(length, self.depths)


class Sink:
    """Appends one JSON record per line; with ``resume`` the records already there are kept and skipped.

    ``identity`` names a record in ``done`` (default: its ``"key"``).
    """

    def __init__(
        self, path: str, *, resume: bool, identity: Callable[[dict[str, Any]], Hashable] | None = None
    ) -> None:
        self.path = path
        self.identity = identity or (lambda record: record["key"])
        self.records: list[dict[str, Any]] = []
        if resume and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                self.records = [json.loads(line) for line in handle if line.strip()]
        else:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            open(path, "w").close()
        self.done = {self.identity(record) for record in self.records}

    def rewrite(self) -> None:
        """Write every record again (after records were changed in place)."""
        self._write(self.records, "w")

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        self._write(records, "a")
        self.records.extend(records)
        self.done.update(self.identity(record) for record in records)

    def _write(self, records: Sequence[dict[str, Any]], mode: str) -> None:
        with open(self.path, mode, encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Progress:
    """Timestamped progress lines on stderr (the log of a background run)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.count = total, label, 0
        self.start = time.monotonic()

    def step(self, count: int, note: str) -> None:
        self.count += count
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.count * (self.total - self.count) if self.count else float("nan")
        print(
            f"[{time.strftime('%H:%M:%S')}] {self.label} {self.count}/{self.total} prompts "
            f"({elapsed / 60:.1f} min, ~{eta / 60:.1f} min left) {note}",
            file=sys.stderr,
            flush=True,
        )


def token_counter(engine: Any):
    """``count_tokens(text)`` with the engine's tokenizer, no special tokens."""

    def count(text: str) -> int:
        return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    return count
