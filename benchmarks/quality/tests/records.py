"""One hand-made steering record, as :mod:`benchmarks.quality.steering` writes them (for the report tests)."""

from __future__ import annotations

from typing import Any


def steering_record(
    condition: str,
    sample: int,
    success: bool,
    *,
    task: str = "french",
    length: int = 512,
    position: str = "before",
    distance: int | None = None,
    degenerate: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """Even samples are the tune half, odd ones the test half, as in the evaluation."""
    return {
        "task": task,
        "length": length,
        "position": position,
        "condition": condition,
        "sample": sample,
        "half": "tune" if sample % 2 == 0 else "test",
        "distance": distance,
        "text": f"{condition} {sample}",
        "success": success,
        "degenerate": degenerate,
        **extra,
    }
